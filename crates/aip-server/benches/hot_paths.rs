//! Server hot paths: registry lookups and churn, plan-driver steps, result assembly.

use std::hint::black_box;

use aip_protocol::plan::Plan;
use aip_protocol::{ActionResult, ClientType, ResultStatus};
use aip_server::conn::ConnHandle;
use aip_server::registry::{ClientEntry, Registry};
use aip_server::session::driver::{
    rounds_result, PlanDriver, Round, SessionContext, SessionDriver, Step,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::json;

const CLIENTS: u64 = 10_000;
const STEPS: usize = 10;

fn conn(id: u64) -> ConnHandle {
    ConnHandle::new(id, tokio::sync::mpsc::channel(1).0)
}

fn registry(c: &mut Criterion) {
    let registry = Registry::default();
    for i in 0..CLIENTS {
        let entry = ClientEntry::new(
            format!("device-{i}"),
            ClientType::Device,
            conn(i),
            None,
            None,
        );
        registry.try_insert(entry).expect("client ids are unique");
    }
    assert_eq!(registry.len(), CLIENTS as usize);

    let mut group = c.benchmark_group("registry_10k");
    group.bench_function("get", |b| {
        b.iter(|| registry.get(black_box("device-5000")).expect("registered"))
    });
    group.bench_function("device", |b| {
        b.iter(|| {
            registry
                .device(black_box("device-5000"))
                .expect("registered")
        })
    });
    let extra = conn(CLIENTS);
    group.bench_function("try_insert_remove_if_conn", |b| {
        b.iter_batched(
            || {
                ClientEntry::new(
                    "device-extra".into(),
                    ClientType::Device,
                    extra.clone(),
                    None,
                    None,
                )
            },
            |entry| {
                registry.try_insert(entry).expect("extra id is free");
                registry
                    .remove_if_conn(black_box("device-extra"), CLIENTS)
                    .expect("extra entry present")
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn plan_json() -> String {
    let steps: Vec<_> = (0..STEPS)
        .map(|i| {
            json!({"actions": [{
                "tool_name": "type_text",
                "parameters": {"text": format!("line {i}")},
                "tool_type": "action",
                "call_id": format!("call-{i}"),
            }]})
        })
        .collect();
    json!({"agent_name": "PlanAgent", "steps": steps}).to_string()
}

fn context(request: &str) -> SessionContext<'_> {
    SessionContext {
        session_id: "3f2a9c1e-5b7d-4e8f-a1c2-d3e4f5a6b7c8",
        task_name: "open_notepad",
        request,
        platform: "windows",
        default_agent_name: "HostAgent",
        executor_id: "device-5000",
        executor_system_info: None,
        executor_tools: None,
    }
}

/// Drives a plan to its end, answering every command with a success.
async fn drive(plan: Plan, ctx: &SessionContext<'_>) -> Vec<Round> {
    let mut driver = PlanDriver::new(Ok(plan));
    let mut rounds = Vec::new();
    loop {
        match driver
            .next_step(ctx, &rounds)
            .await
            .expect("plan driver step")
        {
            Step::Commands { actions, .. } => {
                let action_results = actions
                    .iter()
                    .map(|a| ActionResult {
                        status: ResultStatus::Success,
                        error: None,
                        result: Some(json!({"typed": true})),
                        namespace: Some("HostUIExecutor".into()),
                        call_id: a.call_id.clone(),
                    })
                    .collect();
                rounds.push(Round {
                    response_id: format!("response-{}", rounds.len()),
                    actions,
                    action_results,
                });
            }
            Step::Finish { completed, .. } => {
                assert!(completed, "the plan completes");
                return rounds;
            }
        }
    }
}

fn session(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let request = plan_json();
    let ctx = context(&request);
    let plan = Plan::parse(ctx.request).expect("bench plan is valid");
    assert_eq!(plan.steps.len(), STEPS);

    c.bench_function("plan_driver_10_steps", |b| {
        b.to_async(&runtime).iter_batched(
            || plan.clone(),
            |plan| drive(plan, &ctx),
            BatchSize::SmallInput,
        )
    });

    let rounds = runtime.block_on(drive(plan.clone(), &ctx));
    assert_eq!(rounds.len(), STEPS);
    c.bench_function("rounds_result_10", |b| {
        b.iter(|| rounds_result(black_box(&rounds)))
    });
}

criterion_group!(benches, registry, session);
criterion_main!(benches);
