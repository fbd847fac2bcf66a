//! Client-supplied text in log lines: control characters escaped (no forged lines, no
//! terminal escapes) and cut to a bounded length (no amplification: a 4 MiB error frame
//! logs a few hundred bytes).

use std::fmt;

/// Most characters of one client-supplied value kept in a log line.
pub const MAX_LOGGED_CHARS: usize = 200;

/// Displays `text` escaped and cut; use as `field = %Clip(&value)`.
pub struct Clip<'a>(pub &'a str);

impl fmt::Display for Clip<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shown, (i, c)) in self.0.char_indices().enumerate() {
            if shown == MAX_LOGGED_CHARS {
                return write!(f, "…(+{} bytes)", self.0.len() - i);
            }
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_values_cut() {
        assert_eq!(Clip("ok").to_string(), "ok");
        assert_eq!(
            Clip("a\nINFO forged\u{1b}[2J").to_string(),
            "a\\nINFO forged\\u{1b}[2J"
        );
        let long = "x".repeat(10_000);
        let shown = Clip(&long).to_string();
        assert!(shown.starts_with(&"x".repeat(MAX_LOGGED_CHARS)));
        assert!(shown.ends_with("…(+9800 bytes)"), "{shown}");
    }
}
