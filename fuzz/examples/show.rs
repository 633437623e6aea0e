//! Prints a fuzz input the way its target reads it: a program's steps, a tree's entries, a
//! snapshot's changes, or the text and bytes of the other targets:
//! `cargo run --manifest-path fuzz/Cargo.toml --example show -- <target> <file>`.

use arbitrary::{Arbitrary, Unstructured};
use tagmem_fuzz::device::{all_ops, decode_program, raw_preset, raw_queue_ops};
use tagmem_fuzz::restore::Mutation;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(target), Some(file)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: show <target> <file>");
        std::process::exit(2);
    };
    let data = std::fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    match target.as_str() {
        "device" => {
            for op in decode_program(&data, &all_ops()) {
                println!("{op:?}");
            }
        }
        "queue" => {
            println!("# preset");
            for op in raw_preset() {
                println!("{op:?}");
            }
            println!("# input");
            for op in decode_program(&data, &raw_queue_ops()) {
                println!("{op:?}");
            }
        }
        "restore_state" => {
            let n = data
                .get(..2)
                .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
            let rest = data.get(2..).unwrap_or_default();
            let (program, changes) = rest.split_at(n.min(rest.len()));
            println!("# program");
            for op in decode_program(program, &all_ops()) {
                println!("{op:?}");
            }
            println!("# changes");
            let mut u = Unstructured::new(changes);
            for _ in 0..16 {
                match Mutation::arbitrary(&mut u) {
                    Ok(m) => println!("{m:?}"),
                    Err(_) => break,
                }
                if u.is_empty() {
                    break;
                }
            }
        }
        "sysfs" => {
            use tagmem_fuzz::sysfs::Entry;
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            for e in tagmem_fuzz::sysfs::decode(&data) {
                match e {
                    Entry::File(p, c) => println!("file {} = {:?}", text(&p), text(&c)),
                    Entry::Dir(p) => println!("dir  {}", text(&p)),
                    Entry::Link(p, t) => println!("link {} -> {}", text(&p), text(&t)),
                    Entry::Special(p, s) => println!("{s:?} {}", text(&p)),
                }
            }
        }
        "restore_json" | "http" | "option" => println!("{}", String::from_utf8_lossy(&data)),
        _ => println!("{data:02x?}"),
    }
}
