//! A description of the machine the benchmark ran on, read from `/proc` and `/sys`.

use std::fs;

fn first_line_with(path: &str, key: &str) -> Option<String> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// `key: value` pairs: CPU, CPUs, memory, kernel, KVM modules.
pub fn describe() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut push = |k: &str, v: Option<String>| out.push((k.to_string(), v.unwrap_or_else(|| "?".into())));
    push("cpu", first_line_with("/proc/cpuinfo", "model name"));
    push(
        "cpus",
        std::thread::available_parallelism().ok().map(|n| n.to_string()),
    );
    push("memory", first_line_with("/proc/meminfo", "MemTotal"));
    push(
        "kernel",
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_string()),
    );
    let mut kvm: Vec<String> = fs::read_dir("/sys/module")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|m| m.starts_with("kvm"))
                .collect()
        })
        .unwrap_or_default();
    kvm.sort();
    push("kvm_modules", (!kvm.is_empty()).then(|| kvm.join(",")));
    push(
        "hypervisor",
        fs::read_to_string("/proc/cpuinfo")
            .ok()
            .map(|s| {
                if s.lines()
                    .any(|l| l.starts_with("flags") && l.contains(" hypervisor"))
                {
                    "the host itself runs as a VM (cpuid hypervisor flag set)"
                } else {
                    "bare metal"
                }
            })
            .map(str::to_string),
    );
    out
}
