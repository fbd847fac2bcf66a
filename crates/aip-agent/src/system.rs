//! The `system_info` a device registers with, in the reference's field names
//! (see the `server_device_info_response` vector), read with the sysinfo crate.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sysinfo::{Networks, System};

/// `linux`, `windows` or `macos` for this host.
pub fn host_platform() -> &'static str {
    match std::env::consts::OS {
        "windows" => "windows",
        "macos" => "macos",
        _ => "linux",
    }
}

/// The machine's host name, or `localhost` when it cannot be read.
pub fn hostname() -> String {
    System::host_name().unwrap_or_else(|_| "localhost".to_owned())
}

/// First non-loopback IPv4 address of an interface (IPv6 if there is none).
pub fn ip_address() -> Option<String> {
    let networks = Networks::new_with_refreshed_list().ok()?;
    let mut v6 = None;
    for data in networks.values() {
        for net in data.ip_networks() {
            if net.addr.is_loopback() || net.addr.is_unspecified() {
                continue;
            }
            match net.addr {
                std::net::IpAddr::V4(a) => return Some(a.to_string()),
                std::net::IpAddr::V6(a) if v6.is_none() => v6 = Some(a.to_string()),
                _ => {}
            }
        }
    }
    v6
}

/// A fresh `system_info` object.
pub fn system_info(device_id: &str, platform: &str, tags: &BTreeMap<String, String>) -> Value {
    let (cpus, memory) = match System::new() {
        Ok(mut sys) => {
            sys.refresh_memory();
            sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
            (sys.cpus().len(), sys.total_memory())
        }
        Err(_) => (0, 0),
    };
    let cpus = if cpus == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cpus
    };
    let memory_gb = (memory as f64 / (1024.0 * 1024.0 * 1024.0) * 100.0).round() / 100.0;
    let os_version = System::os_version()
        .or_else(|_| System::kernel_version())
        .unwrap_or_default();
    let mut features = vec!["cli", "file_system"];
    if platform == "windows" {
        features.push("windows_apps");
    }
    json!({
        "device_id": device_id,
        "platform": platform,
        "os": System::long_os_version().or_else(|_| System::name()).unwrap_or_else(|_| std::env::consts::OS.to_owned()),
        "os_version": os_version,
        "kernel_version": System::kernel_version().unwrap_or_default(),
        "architecture": System::cpu_arch(),
        "cpu_count": cpus,
        "memory_total_gb": memory_gb,
        "hostname": hostname(),
        "ip_address": ip_address(),
        "supported_features": features,
        "platform_type": "computer",
        "schema_version": "1.0",
        "custom_metadata": tags,
    })
}
