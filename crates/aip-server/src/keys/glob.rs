//! The client-id patterns of a key file: `*` (any run, empty included) and `?` (one
//! character); everything else matches itself. Linear in the input (one backtrack point).

/// True when `id` matches `pattern` as a whole.
pub fn matches(pattern: &str, id: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = id.chars().collect();
    let (mut pi, mut si) = (0, 0);
    // The last `*` seen and the input position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == '?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn a_pattern_matches_the_whole_id_with_star_and_question_mark() {
        let table = [
            ("laptop", "laptop", true),
            ("laptop", "laptop2", false),
            ("laptop", "lapto", false),
            ("lab-*", "lab-1", true),
            ("lab-*", "lab-", true),
            ("lab-*", "lab", false),
            ("lab-*", "xlab-1", false),
            ("*-gpu", "lab-7-gpu", true),
            ("*-gpu", "lab-7-gpu-2", false),
            ("lab-?", "lab-7", true),
            ("lab-?", "lab-77", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*", "", true),
            ("*", "anything", true),
            ("", "", true),
            ("", "x", false),
            ("é-*", "é-1", true),
        ];
        for (pattern, id, want) in table {
            assert_eq!(matches(pattern, id), want, "{pattern:?} vs {id:?}");
        }
    }
}
