//! The goals of issue 14 judged on the counts, and the row ids every run emits.

use super::*;

/// Adds the goal rows of issue 14 (PASS or MISS with the measured number) to `rep`.
pub fn goals(rep: &mut Report, rows: &[CountRow]) {
    let get = |id: &str| rows.iter().find(|r| r.id == id);
    let mut goal = |id: &str, label: &str, v: Option<f64>, target: Target, why: &str| match v {
        Some(v) => rep.add(id, label, Unit::Count, Stat::derived(v), target, why),
        None => rep.not_run(id, label, Unit::Count, target, why),
    };
    for l in ["2MiB", "1TiB"] {
        let r = get(&format!("counts.tagged.hotadd.{l}"));
        let why = r.map_or("not measured".into(), |r| r.note.clone());
        let why = if r.and_then(|r| r.get("exits")).is_none() {
            "quick mode".to_string()
        } else {
            why
        };
        goal(
            &format!("goal.hotadd_exits.{l}"),
            &format!("goal: VM exits, tagged hot-add of 1 extent, {l}"),
            r.and_then(|r| r.get("exits")),
            Target::AtMost(12.0),
            &why,
        );
        goal(
            &format!("goal.hotadd_slots.{l}"),
            &format!("goal: memslot creations, tagged hot-add of 1 extent, {l}"),
            r.and_then(|r| r.get("slots_created")),
            Target::Exactly(1.0),
            &why,
        );
        let r = get(&format!("counts.tagged.release.{l}"));
        goal(
            &format!("goal.release_slots.{l}"),
            &format!("goal: memslot deletions, release of 1 extent, {l}"),
            r.and_then(|r| r.get("slots_deleted")),
            Target::AtMost(1.0),
            &why,
        );
    }
    let c = get("counts.tagged.chain100.contiguous");
    goal(
        "goal.chain100_exits",
        "goal: VM exits per extent, chain of 100 (contiguous)",
        c.and_then(|r| r.per_unit("exits")),
        Target::AtMost(2.0),
        "",
    );
    let s = get("counts.tagged.chain100.spaced");
    goal(
        "goal.chain100_exits_spaced",
        "goal: VM exits per extent, chain of 100 (spaced)",
        s.and_then(|r| r.per_unit("exits")),
        Target::AtMost(2.0),
        "",
    );
    goal(
        "goal.chain100_slots",
        "goal: memslot creations, chain of 100 (contiguous)",
        c.and_then(|r| r.get("slots_created")),
        Target::AtMost(1.0),
        "",
    );
    let lo = get("counts.tagged.present.10").and_then(|r| r.get("instructions"));
    for n in [1_000u64, 10_000] {
        let hi = get(&format!("counts.tagged.present.{n}")).and_then(|r| r.get("instructions"));
        let why = match (lo, hi) {
            (Some(_), Some(_)) => String::new(),
            _ => get(&format!("counts.tagged.present.{n}"))
                .filter(|r| r.get("exits").is_none())
                .map(|r| r.note.clone())
                .unwrap_or_else(|| "no instruction counts (see the counts note)".into()),
        };
        let id = format!("goal.instructions_flat.{n}");
        let label = format!("goal: host instructions per extent, {n} present / 10 present");
        match (lo, hi) {
            (Some(l), Some(h)) => rep.add(
                &id,
                &label,
                Unit::Ratio,
                Stat::derived(h / l),
                Target::AtMost(1.2),
                "",
            ),
            _ => rep.not_run(&id, &label, Unit::Ratio, Target::AtMost(1.2), &why),
        }
    }
}

/// Row ids the goal section always emits.
pub fn goal_rows() -> Vec<String> {
    let mut v = Vec::new();
    for l in ["2MiB", "1TiB"] {
        v.push(format!("goal.hotadd_exits.{l}"));
        v.push(format!("goal.hotadd_slots.{l}"));
        v.push(format!("goal.release_slots.{l}"));
    }
    v.extend(
        [
            "goal.chain100_exits",
            "goal.chain100_exits_spaced",
            "goal.chain100_slots",
            "goal.instructions_flat.1000",
            "goal.instructions_flat.10000",
        ]
        .map(String::from),
    );
    v
}

/// Count row ids every run emits.
pub fn count_rows() -> Vec<String> {
    let mut v = Vec::new();
    for l in ["2MiB", "1TiB"] {
        v.push(format!("counts.tagged.hotadd.{l}"));
        v.push(format!("counts.tagged.release.{l}"));
    }
    for l in ["2MiB", "4GiB", "1TiB"] {
        v.push(format!("counts.base.plug.{l}"));
        v.push(format!("counts.base.unplug.{l}"));
    }
    for w in ["contiguous", "spaced"] {
        v.push(format!("counts.tagged.chain100.{w}"));
        v.push(format!("counts.tagged.release100.{w}"));
    }
    for n in [10, 1_000, 10_000] {
        v.push(format!("counts.tagged.present.{n}"));
    }
    v.extend(super::linux::COUNT_ROWS.iter().map(|r| r.0.to_string()));
    v
}
