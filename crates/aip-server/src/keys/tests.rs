//! The key file's parsing and what each grant allows, without a server.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use aip_protocol::ClientType;

use super::*;

const OPS: &str = "ops-token-0123456789abcdef";
const LAPTOP: &str = "laptop-token-0123456789abcdef";
const LAB: &str = "lab-token-0123456789abcdef";
const ORCH: &str = "orch-token-0123456789abcdef";

/// The tests' key file, shared with `tests/keys.rs`.
fn file() -> String {
    include_str!("../../tests/fixtures/keys.toml").to_owned()
}

fn set() -> KeySet {
    KeySet::parse(None, Path::new("keys.toml"), &file(), false).unwrap()
}

fn name(g: Option<Grant>) -> Option<String> {
    g.map(|g| g.name().to_owned())
}

#[test]
fn each_token_authenticates_as_its_own_entry_and_others_are_refused() {
    let keys = set();
    assert_eq!(keys.len(), 4);
    assert_eq!(name(keys.authenticate(Some(OPS))).as_deref(), Some("ops"));
    assert_eq!(
        name(keys.authenticate(Some(LAPTOP))).as_deref(),
        Some("laptop")
    );
    assert_eq!(name(keys.authenticate(Some(LAB))).as_deref(), Some("lab"));
    assert_eq!(
        name(keys.authenticate(Some(ORCH))).as_deref(),
        Some("orchestrator")
    );
    assert!(keys.authenticate(Some("wrong-token-0123456789")).is_none());
    assert!(keys.authenticate(Some("")).is_none());
    assert!(keys.authenticate(None).is_none());
    // The hash itself is not a token.
    assert!(keys.authenticate(Some(&to_hex(&sha256(LAPTOP)))).is_none());
}

#[test]
fn without_a_file_the_api_key_grants_everything_and_no_key_means_open() {
    let shared = KeySet::from_api_key(Some("s3cret"));
    assert!(shared.required());
    assert!(matches!(
        shared.authenticate(Some("s3cret")),
        Some(Grant::Full)
    ));
    assert!(shared.authenticate(Some("s3cre")).is_none());
    assert!(shared.authenticate(None).is_none());
    let open = KeySet::from_api_key(None);
    assert!(!open.required());
    assert!(matches!(open.authenticate(None), Some(Grant::Full)));
}

#[test]
fn next_to_a_file_the_api_key_is_an_operator() {
    let keys = KeySet::parse(
        Some("shared-0123456789abcdef"),
        Path::new("k"),
        &file(),
        false,
    )
    .unwrap();
    let g = keys.authenticate(Some("shared-0123456789abcdef")).unwrap();
    assert_eq!(g.name(), "--api-key");
    assert!(g.may_use_api());
    assert!(g
        .registration_refusal(ClientType::Device, "laptop", None)
        .is_some());
    assert!(g
        .registration_refusal(ClientType::Constellation, "c", Some("anything"))
        .is_none());
}

#[test]
fn what_each_role_may_do() {
    use aip_protocol::errors as text;
    let keys = set();
    let grant = |t: &str| keys.authenticate(Some(t)).unwrap();
    let (ops, laptop, lab, orch) = (grant(OPS), grant(LAPTOP), grant(LAB), grant(ORCH));
    let dev = ClientType::Device;
    let con = ClientType::Constellation;
    // (grant, role, client_id, scope, refusal)
    type Row<'a> = (
        &'a Grant,
        ClientType,
        &'a str,
        Option<&'a str>,
        Option<String>,
    );
    let table: Vec<Row> = vec![
        (&laptop, dev, "laptop", None, None),
        (
            &laptop,
            dev,
            "laptop2",
            None,
            Some(text::register_not_permitted("device", "laptop2")),
        ),
        (
            &laptop,
            con,
            "laptop",
            None,
            Some(text::register_not_permitted("constellation", "laptop")),
        ),
        (&lab, dev, "lab-7", None, None),
        (
            &lab,
            dev,
            "laptop",
            None,
            Some(text::register_not_permitted("device", "laptop")),
        ),
        (
            &ops,
            dev,
            "laptop",
            None,
            Some(text::register_not_permitted("device", "laptop")),
        ),
        (&ops, con, "console", Some("laptop"), None),
        (&orch, con, "orch", None, None),
        (&orch, con, "orch", Some("lab-1"), None),
        (
            &orch,
            con,
            "orch",
            Some("laptop"),
            Some(text::target_not_permitted("laptop")),
        ),
        (
            &orch,
            dev,
            "lab-1",
            None,
            Some(text::register_not_permitted("device", "lab-1")),
        ),
        (&Grant::Full, dev, "anything", None, None),
    ];
    for (g, role, id, scope, want) in table {
        assert_eq!(
            g.registration_refusal(role, id, scope),
            want,
            "{} as {} {id} scope {scope:?}",
            g.name(),
            role.as_str()
        );
    }
    assert!(ops.may_use_api() && Grant::Full.may_use_api());
    assert!(!laptop.may_use_api() && !lab.may_use_api() && !orch.may_use_api());
    assert!(orch.may_address("lab-3") && !orch.may_address("laptop"));
    assert!(ops.may_address("laptop") && !laptop.may_address("laptop"));
}

#[test]
fn an_id_held_with_a_device_key_is_replaced_only_under_a_key_for_that_id() {
    let keys = set();
    let grant = |t: &str| keys.authenticate(Some(t)).unwrap();
    let (ops, laptop, lab, orch) = (grant(OPS), grant(LAPTOP), grant(LAB), grant(ORCH));
    assert!(laptop.may_replace(&laptop, "laptop"));
    for other in [&lab, &ops, &orch, &Grant::Full] {
        assert!(!other.may_replace(&laptop, "laptop"), "{}", other.name());
    }
    // Ids held otherwise follow protocol.md §4.2 alone.
    assert!(orch.may_replace(&ops, "console"));
    assert!(lab.may_replace(&Grant::Full, "lab-1"));
}

#[test]
fn a_bad_entry_is_refused_naming_the_file_and_entry_but_never_the_token() {
    let weak = "[[key]]\nname = \"w\"\nrole = \"operator\"\ntoken = \"short-tok\"\n";
    let table = [
        (weak, "shorter than 16"),
        ("[[key]]\nname = \"x\"\nrole = \"admin\"\ntoken = \"0123456789abcdefgh\"\n", "role must be"),
        ("[[key]]\nname = \"x\"\nrole = \"operator\"\n", "exactly one of token"),
        ("[[key]]\nname = \"x\"\nrole = \"operator\"\ntoken_sha256 = \"abc\"\n", "64 hexadecimal"),
        ("[[key]]\nname = \"x\"\nrole = \"device\"\ntoken = \"0123456789abcdefgh\"\n", "needs client_ids"),
        ("[[key]]\nname = \"x\"\nrole = \"operator\"\ntoken = \"0123456789abcdefgh\"\ntargets = [\"a\"]\n", "targets is for"),
        ("[[key]]\nname = \"x\"\nrole = \"operator\"\ntoken = \"0123456789abcdefgh\"\ncolour = 1\n", "unknown field"),
        ("[[key]]\nname = \"x\"\nrole = \"operator\"\ntoken = \"0123456789abcdefgh\"\n[[key]]\nname = \"x\"\nrole = \"operator\"\ntoken = \"0123456789abcdefgi\"\n", "two keys are named 'x'"),
        ("[[key]]\nname = \"x\"\nrole = \"operator\"\ntoken = \"0123456789abcdefgh\"\n[[key]]\nname = \"y\"\nrole = \"operator\"\ntoken = \"0123456789abcdefgh\"\n", "same token as 'x'"),
    ];
    for (text, want) in table {
        let err = format!(
            "{:#}",
            KeySet::parse(None, Path::new("k.toml"), text, false).unwrap_err()
        );
        assert!(err.contains(want), "{text}: {err}");
        assert!(err.contains("k.toml"), "{err}");
        assert!(
            !err.contains("0123456789abcdefg") && !err.contains("short-tok"),
            "token in {err}"
        );
    }
    let ok = KeySet::parse(None, Path::new("k.toml"), weak, true).unwrap();
    assert_eq!(
        name(ok.authenticate(Some("short-tok"))).as_deref(),
        Some("w")
    );
}

#[test]
fn a_reload_swaps_the_whole_set_and_a_bad_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    std::fs::write(&path, file()).unwrap();
    let config = crate::ServerConfig {
        keys_file: Some(path.clone()),
        ..crate::ServerConfig::default()
    };
    let source = KeySource::of(&config);
    let store = KeyStore::new(source.clone(), source.load().unwrap());
    assert!(store.authenticate(Some(OPS)).is_some());
    let before = store.current();

    let added = "new-device-token-0123456789";
    std::fs::write(
        &path,
        format!("[[key]]\nname = \"new\"\nrole = \"device\"\ntoken = \"{added}\"\nclient_ids = [\"n\"]\n"),
    )
    .unwrap();
    assert_eq!(store.reload().unwrap(), 1);
    assert_eq!(
        name(store.authenticate(Some(added))).as_deref(),
        Some("new")
    );
    assert!(
        store.authenticate(Some(OPS)).is_none(),
        "removed with the file's entry"
    );
    // A set taken before the reload (an open connection's view) is unchanged.
    assert!(before.authenticate(Some(OPS)).is_some());

    std::fs::write(&path, "[[key]]\nname = \"broken\"\n").unwrap();
    let err = store.reload().unwrap_err();
    assert!(format!("{err:#}").contains("keys.toml"), "{err:#}");
    assert_eq!(
        name(store.authenticate(Some(added))).as_deref(),
        Some("new"),
        "old set kept"
    );
    std::fs::remove_file(&path).unwrap();
    assert!(store.reload().is_err());
    assert!(store.authenticate(Some(added)).is_some(), "old set kept");
}

#[test]
fn the_example_key_file_parses_with_one_key_per_role() {
    let example = include_str!("../../../../deploy/keys.example.toml");
    let keys = KeySet::parse(None, Path::new("keys.example.toml"), example, false).unwrap();
    let roles: Vec<(&str, Role)> = keys
        .credentials
        .iter()
        .map(|c| (c.name.as_str(), c.role))
        .collect();
    assert_eq!(
        roles,
        [
            ("ops", Role::Operator),
            ("laptop", Role::Device),
            ("lab-orchestrator", Role::Constellation)
        ]
    );
    assert!(keys.credentials[2].may_address("lab-4") && !keys.credentials[2].may_address("laptop"));
}
