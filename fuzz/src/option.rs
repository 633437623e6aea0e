//! The `--tagged-memory` option grammar (and `--memory`, `--api-socket`): any text, one option
//! value a line. What parses is valid, prints back to an option string that parses alike, and
//! has the same meaning in its JSON form; a list groups into chains that partition it.

use tagmem_vmm::config::{
    format_size, group_chains, human_size, parse_options, parse_size, ApiSocketConfig, MemoryConfig,
    OptionError, TaggedMemoryConfig, API_SOCKET_MODES, OPTION,
};

fn check_one(value: &str) {
    match TaggedMemoryConfig::parse(value) {
        Ok(c) => {
            c.validate().expect("a parsed option is valid");
            let printed = c.to_option_string();
            assert_eq!(c.to_string(), printed);
            let again = TaggedMemoryConfig::parse(&printed)
                .unwrap_or_else(|e| panic!("{value:?} prints as {printed:?}, which does not parse: {e}"));
            assert_eq!(
                again, c,
                "{value:?} prints as {printed:?}, which means something else"
            );
            let json = serde_json::to_string(&c).expect("a config encodes as JSON");
            let back: TaggedMemoryConfig = serde_json::from_str(&json).expect("and decodes");
            assert_eq!(back, c, "the JSON form {json} means something else");
        }
        Err(e) => {
            let msg = OptionError::new(OPTION, e).to_string();
            assert!(msg.starts_with("--tagged-memory: ") && msg.len() > 17, "{msg}");
        }
    }
    if let Ok(m) = MemoryConfig::parse(value) {
        assert!(m.size.is_none_or(|s| s > 0 && s % (2 << 20) == 0));
        assert!(m.hotplug_size % (128 << 20) == 0 && m.hotplugged_size % (128 << 20) == 0);
    }
    if let Ok(a) = ApiSocketConfig::parse(value) {
        assert!(API_SOCKET_MODES.contains(&a.mode));
        assert!(
            !a.path.as_os_str().is_empty(),
            "{value:?} gives an empty socket path"
        );
    }
    if let Ok(n) = parse_size("size", value) {
        assert_eq!(parse_size("size", &format_size(n)).ok(), Some(n), "{value:?}");
        assert!(!human_size(n).is_empty());
    }
}

/// Checks every line of `data` as an option value, then the lines as one command line.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let values: Vec<&str> = text.lines().take(64).collect();
    for v in &values {
        check_one(v);
    }
    if let Ok((configs, chains)) = parse_options(&values) {
        assert_eq!(configs.len(), values.len());
        let mut seen = vec![false; configs.len()];
        let mut last_first = None;
        for chain in &chains {
            assert!(!chain.is_empty());
            assert!(
                last_first < Some(chain[0]),
                "chains come in the order of their first extent"
            );
            last_first = Some(chain[0]);
            let tag = configs[chain[0]].tag();
            assert!(
                !tag.is_nil() || chain.len() == 1,
                "an untagged extent is a chain of its own"
            );
            assert!(
                chain.windows(2).all(|w| w[0] < w[1]),
                "a chain keeps the order given"
            );
            for &i in chain {
                assert!(!seen[i], "extent {i} is in two chains");
                seen[i] = true;
                assert_eq!(configs[i].tag(), tag, "a chain carries one tag");
            }
        }
        assert!(seen.iter().all(|s| *s), "every extent is in a chain");
        assert_eq!(group_chains(&configs).ok(), Some(chains));
    }
}
