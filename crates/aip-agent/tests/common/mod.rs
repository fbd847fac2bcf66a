//! Device-agent specifics on top of the workspace harness (`aip_testkit`): real device
//! agents with built-in tools, connected to a real server in this process.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use aip_agent::device::{Device, DeviceConfig};
use aip_agent::tools::builtin::{add_builtins, BuiltinOptions};
use aip_agent::tools::{Policy, ToolSet};
use serde_json::{json, Value};

pub use aip_testkit::TestApp;
use tokio_util::sync::CancellationToken;

/// A server (the workspace harness) on `port` (0: any) with its store in `dir`; commands
/// time out after 20 s here, as devices really run them.
pub async fn start_server(port: u16, dir: &std::path::Path) -> TestApp {
    start_server_with(port, dir, |_| {}).await
}

/// [`start_server`], then `tweak`.
pub async fn start_server_with(
    port: u16,
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut aip_server::ServerConfig),
) -> TestApp {
    aip_testkit::spawn_at(port, dir, |c| {
        c.command_timeout = Duration::from_secs(20);
        tweak(c);
    })
    .await
}

pub fn tools(id: &str, policy: Arc<dyn Policy>, shell: bool) -> ToolSet {
    let mut set = ToolSet::new(policy, Duration::from_secs(60));
    add_builtins(
        &mut set,
        &BuiltinOptions {
            device_id: id.into(),
            platform: "linux".into(),
            tags: Default::default(),
            shell,
            max_command_timeout: Duration::from_secs(60),
            output_cap: 1024,
        },
    );
    set
}

pub fn start_device(port: u16, id: &str, set: ToolSet) -> CancellationToken {
    start_device_with(port, id, set, |_| {})
}

pub fn start_device_with(
    port: u16,
    id: &str,
    set: ToolSet,
    tweak: impl FnOnce(&mut DeviceConfig),
) -> CancellationToken {
    let mut config = DeviceConfig::new(format!("ws://127.0.0.1:{port}/ws"), id);
    config.backoff_initial = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(500);
    config.heartbeat_interval = Duration::from_secs(1);
    tweak(&mut config);
    let stop = CancellationToken::new();
    let device = Device::new(config, set);
    let token = stop.clone();
    tokio::spawn(async move { device.run(token).await });
    stop
}

pub fn shell(command: &str, extra: Value) -> Value {
    let mut params = json!({"command": command});
    if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    json!({"tool_name": "execute_command", "tool_type": "action", "parameters": params})
}
