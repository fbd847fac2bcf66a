//! Identifier rules (protocol.md §2.6) and `task_name` handling (§4.6, http-api.md §3.3).

/// Longest `client_id` / `session_id`, in characters.
pub const MAX_ID_LEN: usize = 256;
/// Longest stored `task_name`, in characters.
pub const MAX_TASK_NAME_LEN: usize = 128;
/// Longest `request` of a task, in bytes (well below any frame limit: it is stored and
/// kept with the session).
pub const MAX_REQUEST_LEN: usize = 1024 * 1024;
/// Longest `error` of a device's `task_end`, in bytes.
pub const MAX_ERROR_LEN: usize = 64 * 1024;
/// Largest registration `metadata`, in bytes of JSON.
pub const MAX_METADATA_LEN: usize = 1024 * 1024;

/// A `client_id` is 1–256 characters without control characters.
pub fn is_valid_client_id(id: &str) -> bool {
    let n = id.chars().count();
    (1..=MAX_ID_LEN).contains(&n) && !id.chars().any(char::is_control)
}

/// A client-supplied `session_id` is at most 256 characters (empty means "absent").
pub fn is_valid_session_id(id: &str) -> bool {
    id.chars().count() <= MAX_ID_LEN
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-'
}

/// WebSocket path: make any `task_name` safe (never rejects). `None` means "generate one".
pub fn sanitize_task_name(name: Option<&str>) -> String {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return uuid::Uuid::new_v4().to_string();
    };
    // 2. every character outside [A-Za-z0-9._-] becomes '_'
    let replaced: String = name
        .chars()
        .map(|c| if is_name_char(c) { c } else { '_' })
        .collect();
    // 3. every run of two or more '.' becomes a single '_'
    let mut collapsed = String::with_capacity(replaced.len());
    let mut chars = replaced.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '.' && chars.peek() == Some(&'.') {
            while chars.peek() == Some(&'.') {
                chars.next();
            }
            collapsed.push('_');
        } else {
            collapsed.push(c);
        }
    }
    // 4. leading '.' removed; 5. truncated to 128 characters
    let out: String = collapsed
        .trim_start_matches('.')
        .chars()
        .take(MAX_TASK_NAME_LEN)
        .collect();
    // 6. nothing alphanumeric left -> a new UUID
    if out.chars().any(|c| c.is_ascii_alphanumeric()) {
        out
    } else {
        uuid::Uuid::new_v4().to_string()
    }
}

/// HTTP path: `^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$`.
pub fn is_valid_http_task_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) if first != '.' && is_name_char(first) => {}
        _ => return false,
    }
    name.len() <= MAX_TASK_NAME_LEN && chars.all(is_name_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_uuid(s: &str) -> bool {
        uuid::Uuid::parse_str(s).is_ok()
    }

    #[test]
    fn sanitize_examples_from_the_spec() {
        assert_eq!(sanitize_task_name(Some("open_notepad")), "open_notepad");
        assert_eq!(
            sanitize_task_name(Some("galaxy/galaxy_main/open_notepad")),
            "galaxy_galaxy_main_open_notepad"
        );
        assert_eq!(sanitize_task_name(Some("../escape")), "__escape");
        assert_eq!(sanitize_task_name(Some("C:\\escape")), "C__escape");
        assert!(is_uuid(&sanitize_task_name(Some(".."))));
        assert!(is_uuid(&sanitize_task_name(Some(""))));
        assert!(is_uuid(&sanitize_task_name(None)));
        assert_eq!(sanitize_task_name(Some(".hidden")), "hidden");
        assert_eq!(sanitize_task_name(Some("a...b")), "a_b");
        assert_eq!(sanitize_task_name(Some(&"x".repeat(300))).len(), 128);
    }

    #[test]
    fn http_task_names() {
        assert!(is_valid_http_task_name("notepad_hello"));
        assert!(is_valid_http_task_name("a.b-c"));
        assert!(!is_valid_http_task_name("../escape"));
        assert!(!is_valid_http_task_name(".x"));
        assert!(!is_valid_http_task_name("a/b"));
        assert!(!is_valid_http_task_name("a\\b"));
        assert!(!is_valid_http_task_name(""));
        assert!(!is_valid_http_task_name(&"x".repeat(129)));
        assert!(is_valid_http_task_name(&"x".repeat(128)));
    }

    #[test]
    fn client_ids() {
        assert!(is_valid_client_id("galaxy_main@device_win_001"));
        assert!(!is_valid_client_id(""));
        assert!(!is_valid_client_id("a\nb"));
        assert!(!is_valid_client_id(&"x".repeat(257)));
    }
}
