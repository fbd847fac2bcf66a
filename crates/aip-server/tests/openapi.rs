//! The OpenAPI document (`/api/openapi.json`) against reality: every route of the router
//! is in it and every path in it is a route; every example matches its schema; real
//! answers of a running server — successes and the errors 400/401/404/409/422 — match
//! the schema documented for their status, with unknown fields refused (the document
//! itself lets clients ignore them), so a handler cannot change shape silently; and the
//! docs page (`/docs`) loads nothing from another host.

use std::collections::BTreeSet;

use aip_testkit::*;
use serde_json::{json, Value};

const KEY: &str = "openapi-test-key-0123456789";
/// `--max-http-body` of the servers here: small, so a 413 is cheap to provoke.
const MAX_BODY: usize = 16 * 1024;

/// The router's source: the routes it declares are compared with the document's paths.
const ROUTER_SOURCE: &str = include_str!("../src/web/mod.rs");

/// Paths the docs page's own router serves, which the document does not describe.
const DOCS_ROUTES: [&str; 2] = ["/api/openapi.json", "/docs"];

/// True for a `text/event-stream` answer (`GET /api/events`), which never ends.
fn is_stream(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// `(method, path)` of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("path item");
            methods.keys().map(move |m| (m.clone(), path.clone()))
        })
        .collect()
}

/// `(method, path)` of every `.route(...)` in the router's source.
fn routes_in_source(source: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for chunk in source.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).expect("a route's path literal");
        let handlers = chunk.split(".merge(").next().unwrap_or(chunk);
        let handlers = handlers.split(".fallback(").next().unwrap_or(handlers);
        for method in ["get", "post", "put", "patch", "delete"] {
            let call = format!("{method}(");
            let named = handlers.match_indices(&call).any(|(i, _)| {
                !handlers[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if named {
                routes.insert((method.to_owned(), path.to_owned()));
            }
        }
    }
    routes
}

/// Every object schema refuses properties it does not list.
fn refuse_unknown_fields(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(refuse_unknown_fields);
        }
        Value::Array(items) => items.iter_mut().for_each(refuse_unknown_fields),
        _ => {}
    }
}

/// Validates `instance` against `schema`, whose `$ref`s point into `doc`'s components
/// (made strict); formats (`date-time`) are checked too.
fn assert_matches(doc: &Value, schema: &Value, instance: &Value, what: &str) {
    let mut components = doc["components"].clone();
    refuse_unknown_fields(&mut components);
    let root = json!({"allOf": [schema], "components": components});
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("{what}: the schema does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: {instance} does not match: {errors:#?}"
    );
}

/// A server with an API key, a device and a constellation, and the document it serves.
struct Checked {
    app: TestApp,
    doc: Value,
    /// `(method, path, status)` of every answer checked.
    seen: BTreeSet<(String, String, u16)>,
}

impl Checked {
    async fn start() -> Checked {
        let app = spawn_app_with(|c| {
            c.api_key = Some(KEY.into());
            c.max_http_body = MAX_BODY;
        })
        .await;
        let resp = reqwest::get(app.url("/api/openapi.json"))
            .await
            .expect("GET");
        assert_eq!(resp.status(), 200, "the document needs no key");
        let doc: Value = resp.json().await.expect("JSON");
        Checked {
            app,
            doc,
            seen: BTreeSet::new(),
        }
    }

    /// Sends a request for the operation `(method, template)` to `path`, with the key
    /// when `key`, and checks the answer against the document. Returns status and body.
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<&str>,
        key: bool,
    ) -> (u16, Value) {
        let url = self.app.url(path);
        let http = &self.app.http;
        let mut rb = match method {
            "get" => http.get(url),
            "post" => http.post(url),
            "delete" => http.delete(url),
            other => panic!("no {other} in this API"),
        };
        if key {
            rb = rb.header("X-API-Key", KEY);
        }
        if let Some(b) = body {
            rb = rb
                .header("Content-Type", "application/json")
                .body(b.to_owned());
        }
        let mut resp = rb.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = if is_stream(&headers) {
            // An endless stream: its first chunk (the opening lines) is checked.
            let first = resp.chunk().await.expect("body").unwrap_or_default();
            String::from_utf8_lossy(&first).into_owned()
        } else {
            resp.text().await.expect("body")
        };
        let what = format!("{method} {path} → {status}");
        let op = &self.doc["paths"][template][method];
        assert!(op.is_object(), "{method} {template} is not documented");
        let documented = &op["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{what}: status not documented: {text}"
        );
        for name in documented["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|h| h.0)
        {
            assert!(
                headers.contains_key(name.as_str()),
                "{what}: no {name} header"
            );
        }
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or("")
            .trim()
            .to_owned();
        let media = &documented["content"][content_type.as_str()];
        assert!(media.is_object(), "{what}: {content_type} not documented");
        let instance = if content_type == "application/json" {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"))
        } else {
            Value::String(text)
        };
        assert_matches(&self.doc, &media["schema"], &instance, &what);
        self.seen
            .insert((method.to_owned(), template.to_owned(), status));
        (status, instance)
    }

    async fn get(&mut self, template: &str, path: &str) -> (u16, Value) {
        self.call("get", template, path, None, true).await
    }

    async fn delete(&mut self, path: &str) -> (u16, Value) {
        self.call("delete", "/api/sessions/{id}", path, None, true)
            .await
    }

    async fn dispatch(&mut self, body: &str) -> (u16, Value) {
        self.call("post", "/api/dispatch", "/api/dispatch", Some(body), true)
            .await
    }
}

// ---------------------------------------------------------------------------
// The document

#[tokio::test]
async fn the_document_is_openapi_3_1_served_without_the_key_and_generated_from_the_code() {
    let checked = Checked::start().await;
    assert_eq!(checked.doc["openapi"], "3.1.0");
    let generated = serde_json::to_value(aip_server::web::openapi::document()).expect("JSON");
    assert_eq!(checked.doc, generated);
    let schemes = &checked.doc["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(
        checked.doc["security"],
        json!([{"api_key": []}, {"bearer": []}])
    );
    // Health and readiness are public; everything else names the key.
    for (method, path) in operations(&checked.doc) {
        let security = &checked.doc["paths"][&path][&method]["security"];
        let public = path == "/api/health" || path == "/api/ready";
        assert_eq!(
            security == &json!([{}]),
            public,
            "{method} {path}: {security}"
        );
    }
}

#[tokio::test]
async fn every_route_of_the_router_is_in_the_document_and_every_path_is_a_route() {
    let checked = Checked::start().await;
    let routes = routes_in_source(ROUTER_SOURCE);
    assert!(
        routes.len() >= 10,
        "the router's routes were not found: {routes:?}"
    );
    assert_eq!(routes, operations(&checked.doc));
    // The docs page's router is the one other source of routes.
    assert_eq!(ROUTER_SOURCE.matches(".merge(").count(), 1);
    assert!(ROUTER_SOURCE.contains(".merge(openapi::routes())"));
    // Every documented operation reaches a handler: neither the unknown-route answer
    // nor the wrong-method one.
    for (method, path) in operations(&checked.doc) {
        let url = checked.app.url(&path.replace("{id}", "no-such-id"));
        let rb = match method.as_str() {
            "get" => checked.app.http.get(url),
            "post" => checked.app.http.post(url),
            _ => checked.app.http.delete(url),
        };
        let resp = rb.header("X-API-Key", KEY).send().await.expect("request");
        let status = resp.status().as_u16();
        if is_stream(resp.headers()) {
            continue;
        }
        let body = resp.text().await.expect("body");
        assert_ne!(status, 405, "{method} {path}");
        assert!(
            !(status == 404 && body == r#"{"detail":"Not Found"}"#),
            "{method} {path} is not routed"
        );
    }
    for path in DOCS_ROUTES {
        assert!(!checked.doc["paths"][path].is_object(), "{path}");
    }
}

#[tokio::test]
async fn every_example_in_the_document_matches_its_schema_and_every_answer_has_one() {
    let doc = serde_json::to_value(aip_server::web::openapi::document()).expect("JSON");
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for (name, schema) in schemas {
        if let Some(example) = schema.get("example") {
            assert_matches(&doc, schema, example, &format!("example of {name}"));
        }
    }
    let body = &doc["paths"]["/api/dispatch"]["post"]["requestBody"]["content"]["application/json"];
    let request = &doc["components"]["schemas"]["DispatchRequest"];
    assert_matches(
        &doc,
        &body["schema"],
        &request["example"],
        "the dispatch body",
    );
    let mut examples = 0;
    for (method, path) in operations(&doc) {
        let responses = doc["paths"][&path][&method]["responses"]
            .as_object()
            .expect("responses");
        for (status, response) in responses {
            for (media_type, media) in response["content"].as_object().into_iter().flatten() {
                let what = format!("{method} {path} {status} {media_type}");
                let schema = &media["schema"];
                let own = media["example"].clone();
                let named = media["examples"].as_object().into_iter().flatten();
                let mut values: Vec<Value> = named.map(|(_, e)| e["value"].clone()).collect();
                if !own.is_null() {
                    values.push(own);
                }
                if let Some(name) = schema["$ref"].as_str() {
                    let name = name.trim_start_matches("#/components/schemas/");
                    values.extend(doc["components"]["schemas"][name].get("example").cloned());
                }
                assert!(!values.is_empty(), "{what} has no example");
                for value in values {
                    assert_matches(&doc, schema, &value, &what);
                    examples += 1;
                }
            }
        }
    }
    assert!(examples > 40, "{examples}");
}

// ---------------------------------------------------------------------------
// Real answers

#[tokio::test]
async fn real_answers_of_every_route_match_the_documented_schemas() {
    let mut c = Checked::start().await;
    let mut d = c.app.device("dev-1").await;
    let _k = c.app.constellation("k1", Some("dev-1")).await;

    // Operations.
    let (_, health) = c.get("/api/health", "/api/health").await;
    assert!(health["online_clients"].is_array(), "{health}");
    let (_, anonymous) = c
        .call("get", "/api/health", "/api/health", None, false)
        .await;
    assert!(anonymous.get("online_clients").is_none(), "{anonymous}");
    assert_eq!(c.get("/api/ready", "/api/ready").await.0, 200);
    let (status, _) = c.get("/metrics", "/metrics").await;
    assert!(status == 200 || status == 503, "{status}");
    let (status, _) = c.call("get", "/ws", "/ws", None, false).await;
    assert_eq!(status, 400, "a GET that is no upgrade");
    assert_eq!(c.get("/api/clients", "/api/clients").await.0, 200);
    let (status, _) = c
        .call("get", "/api/clients", "/api/clients", None, false)
        .await;
    assert_eq!(status, 401);
    let (status, opening) = c.get("/api/events", "/api/events").await;
    assert_eq!(status, 200);
    assert!(
        opening.as_str().is_some_and(|t| t.starts_with("retry: ")),
        "{opening}"
    );
    let (status, _) = c
        .call("get", "/api/events", "/api/events", None, false)
        .await;
    assert_eq!(status, 401);

    // A session that runs to the end.
    let plan = r#"{"target_id": "dev-1", "request": "plan", "session_id": "s-done",
        "task_name": "t-done", "commands": [{"tool_name": "t", "tool_type": "action"}]}"#;
    assert_eq!(c.dispatch(plan).await.0, 200);
    let task = d.recv().await;
    d.send(
        json!({"type": "task", "status": "continue", "client_id": "dev-1",
                  "session_id": "s-done", "request": task["user_request"]}),
    )
    .await;
    expect_ack(&mut d, "s-done").await;
    let cmd = expect_command(&mut d, "s-done").await;
    d.send(results_for(&cmd, "dev-1")).await;
    expect_task_end(&mut d, "s-done", "completed").await;
    c.app.wait_done("s-done").await;
    let by_name = c
        .get("/api/task_result/{id}", "/api/task_result/t-done")
        .await;
    assert_eq!(by_name.1["status"], "done", "{by_name:?}");
    assert_eq!(
        c.get("/api/sessions/{id}", "/api/sessions/s-done").await.0,
        200
    );

    // A session left pending (never accepted), then cancelled.
    let pending = r#"{"client_id": "dev-1", "request": "open notepad", "session_id": "s-live"}"#;
    assert_eq!(c.dispatch(pending).await.0, 200);
    let live = c
        .get("/api/task_result/{id}", "/api/task_result/s-live")
        .await;
    assert_eq!(live.1["status"], "pending", "{live:?}");
    assert_eq!(c.get("/api/sessions", "/api/sessions").await.0, 200);
    let cancelled = c.delete("/api/sessions/s-live").await;
    assert_eq!(cancelled.1["state"], "cancelled", "{cancelled:?}");
    assert_eq!(c.delete("/api/sessions/s-live").await.0, 409);
    assert_eq!(c.delete("/api/sessions/nope").await.0, 404);

    // Refusals.
    for (body, status) in [
        (r#"{"target_id": "dev-1", "request": ""}"#, 400),
        (r#"{"request": "x"}"#, 400),
        (r#"{"target_id": "k1", "request": "x"}"#, 400),
        (
            r#"{"target_id": "dev-1", "request": "x", "commands": []}"#,
            400,
        ),
        (r#"{"target_id": "ghost", "request": "x"}"#, 404),
        (
            r#"{"target_id": "dev-1", "request": "x", "session_id": "s-done"}"#,
            409,
        ),
        (r#"["not", "an", "object"]"#, 422),
    ] {
        assert_eq!(c.dispatch(body).await.0, status, "{body}");
    }
    let too_large = format!(
        r#"{{"target_id": "dev-1", "request": "{}"}}"#,
        "x".repeat(MAX_BODY)
    );
    assert_eq!(c.dispatch(&too_large).await.0, 413);
    let sessions = "/api/sessions";
    assert_eq!(c.get(sessions, "/api/sessions?state=bogus").await.0, 400);
    assert_eq!(c.get(sessions, "/api/sessions?limit=0").await.0, 400);
    let filtered = c
        .get(sessions, "/api/sessions?state=completed&limit=5")
        .await;
    assert_eq!(
        filtered.1["sessions"][0]["session_id"], "s-done",
        "{filtered:?}"
    );
    assert_eq!(
        c.get("/api/task_result/{id}", "/api/task_result/nope")
            .await
            .0,
        404
    );
    assert_eq!(
        c.get("/api/sessions/{id}", "/api/sessions/nope").await.0,
        404
    );

    // Fleet jobs, and the selectors of /api/clients.
    let jobs = "/api/jobs";
    let job = r#"{"selector": {"client_ids": "dev-*", "platform": "linux"}, "batch": "50%",
        "commands": [{"tool_name": "t", "tool_type": "action"}], "max_failures": 1,
        "timeout": "60s"}"#;
    let (status, created) = c.call("post", jobs, jobs, Some(job), true).await;
    assert_eq!(status, 200, "{created}");
    let id = created["job_id"].as_str().expect("job_id").to_owned();
    let one = "/api/jobs/{id}";
    let (_, live) = c.get(one, &format!("/api/jobs/{id}")).await;
    let member_session = live["members"][0]["session_id"].clone();
    if let Some(sid) = member_session.as_str() {
        let (_, s) = c
            .get("/api/sessions/{id}", &format!("/api/sessions/{sid}"))
            .await;
        assert_eq!(s["job_id"], id.as_str(), "{s}");
    }
    assert_eq!(
        c.get(one, &format!("/api/jobs/{id}?members=bogus")).await.0,
        400
    );
    assert_eq!(
        c.get(one, &format!("/api/jobs/{id}?members=none")).await.0,
        200
    );
    assert_eq!(c.get(jobs, jobs).await.0, 200);
    assert_eq!(c.get(jobs, "/api/jobs?limit=0").await.0, 400);
    let path = format!("/api/jobs/{id}");
    let (status, cancelled) = c.call("delete", one, &path, None, true).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(c.call("delete", one, &path, None, true).await.0, 409);
    assert_eq!(
        c.call("delete", one, "/api/jobs/nope", None, true).await.0,
        404
    );
    assert_eq!(c.get(one, "/api/jobs/nope").await.0, 404);
    for (body, status) in [
        (
            r#"{"selector": {"platform": "plan9"}, "request": "x"}"#,
            404,
        ),
        (r#"{"selector": {}, "request": "x"}"#, 400),
        (
            r#"{"selector": {"platform": "linux"}, "request": "x", "batch": "0%"}"#,
            400,
        ),
        (r#"["x"]"#, 422),
    ] {
        assert_eq!(
            c.call("post", jobs, jobs, Some(body), true).await.0,
            status,
            "{body}"
        );
    }
    let clients = "/api/clients";
    assert_eq!(
        c.get(clients, "/api/clients?platform=linux&tag=x=*")
            .await
            .0,
        404
    );
    assert_eq!(c.get(clients, "/api/clients?client_id=dev-1").await.0, 200);
    assert_eq!(c.get(clients, "/api/clients?tag=role").await.0, 400);

    // Every operation was exercised, and every status the issue names.
    let exercised: BTreeSet<_> = c
        .seen
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    assert_eq!(exercised, operations(&c.doc));
    let statuses: BTreeSet<u16> = c.seen.iter().map(|s| s.2).collect();
    for status in [200, 400, 401, 404, 409, 413, 422] {
        assert!(
            statuses.contains(&status),
            "{status} not seen: {statuses:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The docs page

/// Every `src="…"` and `href="…"` of an HTML page.
fn references(html: &str) -> Vec<String> {
    ["src=\"", "href=\""]
        .iter()
        .flat_map(|attr| html.split(attr).skip(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_docs_page_is_public_and_loads_only_files_from_the_server_itself() {
    let app = spawn_app_with(|c| c.api_key = Some(KEY.into())).await;
    let resp = reqwest::get(app.url("/docs")).await.expect("GET /docs");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.url().path(), "/docs/");
    let content_type = resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = resp.text().await.expect("HTML");
    let refs = references(&html);
    assert!(refs.iter().any(|r| r.ends_with(".js")), "{html}");
    for r in &refs {
        assert!(!r.contains("//"), "{r} is not a file of this server");
        let asset = reqwest::get(app.url(&format!("/docs/{}", r.trim_start_matches("./"))))
            .await
            .expect("GET asset");
        assert_eq!(asset.status(), 200, "{r}");
        assert!(!asset.bytes().await.expect("asset").is_empty(), "{r}");
    }
    // The page reads this server's document, and sends it to no online validator.
    let init = reqwest::get(app.url("/docs/swagger-initializer.js"))
        .await
        .expect("GET")
        .text()
        .await
        .expect("JS")
        .replace([' ', '\n'], "");
    assert!(init.contains("\"url\":\"/api/openapi.json\""), "{init}");
    assert!(init.contains("\"validatorUrl\":\"none\""), "{init}");
    assert!(!init.contains("https://"), "{init}");
    // The rest of the API still needs the key.
    let refused = reqwest::get(app.url("/api/clients")).await.expect("GET");
    assert_eq!(refused.status(), 401);
}
