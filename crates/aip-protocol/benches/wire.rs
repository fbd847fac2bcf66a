//! Wire-format hot paths: parsing client frames, serialising server frames,
//! `task_name` sanitisation.

use std::hint::black_box;

use aip_protocol::validate::sanitize_task_name;
use aip_protocol::{parse_client_message, ServerMessage};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

const HEARTBEAT_DEVICE: &str = include_str!("../tests/vectors/client_heartbeat_device.json");
const COMMAND_RESULTS: &str = include_str!("../tests/vectors/client_command_results.json");
const REGISTER_DEVICE: &str = include_str!("../tests/vectors/client_register_device.json");

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_client_message");
    for (name, text) in [
        ("heartbeat_device", HEARTBEAT_DEVICE),
        ("command_results", COMMAND_RESULTS),
        ("register_device", REGISTER_DEVICE),
    ] {
        parse_client_message(text).expect("test vector parses");
        group.bench_function(name, |b| {
            b.iter(|| parse_client_message(black_box(text)).expect("test vector parses"))
        });
    }
    group.finish();
}

fn serialise(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_message_to_json");
    group.bench_function("heartbeat_ok", |b| {
        b.iter(|| black_box(ServerMessage::heartbeat_ok()).to_json())
    });
    let result = json!({"rounds": [{"response_id": "r-1", "action_results": [
        {"status": "success", "error": null, "result": {"typed": true},
         "namespace": "HostUIExecutor", "call_id": "c-1"}
    ]}]});
    group.bench_function("task_end", |b| {
        b.iter(|| {
            ServerMessage::task_end(
                black_box("3f2a9c1e-5b7d-4e8f-a1c2-d3e4f5a6b7c8"),
                black_box("open_notepad"),
                true,
                Some(result.clone()),
                None,
            )
            .to_json()
        })
    });
    // Serialisation alone: the server's writer against serde_json's derive.
    let task = ServerMessage::task_assignment(
        "3f2a9c1e-5b7d-4e8f-a1c2-d3e4f5a6b7c8",
        "9b1d7c2e-0f3a-4b5c-8d6e-7f8a9b0c1d2e",
        "open notepad and type hello",
        Some("HostAgent"),
    );
    group.bench_function("task_assignment_written", |b| {
        b.iter(|| black_box(&task).to_json())
    });
    group.bench_function("task_assignment_serde_json", |b| {
        b.iter(|| serde_json::to_string(black_box(&task)))
    });
    group.finish();
}

fn sanitise(c: &mut Criterion) {
    c.bench_function("sanitize_task_name", |b| {
        b.iter(|| sanitize_task_name(black_box(Some("galaxy/galaxy_main/open_notepad"))))
    });
}

criterion_group!(benches, parse, serialise, sanitise);
criterion_main!(benches);
