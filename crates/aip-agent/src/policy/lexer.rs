//! Reading a shell command line as a POSIX shell would: words after quote removal,
//! segments between operators, redirections, and the content of substitutions.

/// One shell word after quote removal.
#[derive(Debug, Clone, Default)]
pub(super) struct Word {
    pub(super) text: String,
    /// Contains something the shell expands (`$`, globs, braces): its value is unknown.
    pub(super) dynamic: bool,
    /// Length of `text` before the first quoted or escaped character, if any.
    quoted_at: Option<usize>,
    open_bracket: bool,
    open_brace: bool,
}

impl Word {
    fn mark_quoted(&mut self) {
        if self.quoted_at.is_none() {
            self.quoted_at = Some(self.text.len());
        }
    }

    /// An unquoted literal, e.g. a reserved word.
    pub(super) fn is_plain(&self, s: &str) -> bool {
        self.quoted_at.is_none() && self.text == s
    }

    /// The variable name if this is a `NAME=value` (or `NAME+=value`) assignment.
    pub(super) fn assignment(&self) -> Option<&str> {
        let eq = self.text.find('=')?;
        if self.quoted_at.is_some_and(|q| q <= eq) {
            return None;
        }
        let name = self.text[..eq]
            .strip_suffix('+')
            .unwrap_or(&self.text[..eq]);
        let mut chars = name.chars();
        let first = chars.next()?;
        let valid = (first.is_ascii_alphabetic() || first == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        valid.then_some(name)
    }
}

#[derive(Debug)]
pub(super) enum Tok {
    Word(Word),
    Redirect,
}

#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub(super) segments: Vec<Vec<Tok>>,
    /// Operators in order of appearance (separators, redirections, substitutions).
    pub(super) operators: Vec<String>,
    /// (opening operator, inner command line) of each substitution.
    pub(super) substitutions: Vec<(String, String)>,
}

struct Lexer {
    chars: Vec<char>,
    i: usize,
    word: Option<Word>,
    segment: Vec<Tok>,
    out: Parsed,
}

impl Lexer {
    fn peek(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).copied()
    }

    fn word(&mut self) -> &mut Word {
        self.word.get_or_insert_with(Word::default)
    }

    fn finish_word(&mut self) {
        if let Some(w) = self.word.take() {
            self.segment.push(Tok::Word(w));
        }
    }

    fn separator(&mut self, op: &str) {
        self.finish_word();
        self.out.segments.push(std::mem::take(&mut self.segment));
        self.out.operators.push(op.to_owned());
        self.i += op.chars().count();
    }

    /// At `(` (index `open`): the text up to the matching `)`, and the index after it.
    fn scan_parens(&self, open: usize) -> Result<(String, usize), String> {
        let c = &self.chars;
        let (mut depth, mut j) = (0usize, open);
        while j < c.len() {
            match c[j] {
                '\\' => j += 1,
                '\'' => j = find_from(c, j + 1, '\'').ok_or("unterminated single quote")?,
                '"' => {
                    j += 1;
                    while j < c.len() && c[j] != '"' {
                        j += if c[j] == '\\' { 2 } else { 1 };
                    }
                    if j >= c.len() {
                        return Err("unterminated double quote".to_owned());
                    }
                }
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok((c[open + 1..j].iter().collect(), j + 1));
                    }
                }
                _ => {}
            }
            j += 1;
        }
        Err("unterminated '('".to_owned())
    }

    /// At `$(`, `<(` or `>(`: records the substitution and appends it to the word.
    fn paren_substitution(&mut self) -> Result<(), String> {
        let op: String = self.chars[self.i..self.i + 2].iter().collect();
        let (inner, end) = self
            .scan_parens(self.i + 1)
            .map_err(|_| format!("unterminated '{op}'"))?;
        let w = self.word();
        w.text.push_str(&format!("{op}{inner})"));
        w.dynamic = true;
        self.out.operators.push(op.clone());
        self.out.substitutions.push((op, inner));
        self.i = end;
        Ok(())
    }

    /// At a backtick: records the substitution and appends it to the word.
    fn backtick_substitution(&mut self) -> Result<(), String> {
        let c = &self.chars;
        let mut j = self.i + 1;
        let mut inner = String::new();
        loop {
            match c.get(j) {
                None => return Err("unterminated '`'".to_owned()),
                Some('`') => break,
                Some('\\') if matches!(c.get(j + 1), Some('`' | '\\' | '$')) => {
                    inner.push(c[j + 1]);
                    j += 2;
                }
                Some(&ch) => {
                    inner.push(ch);
                    j += 1;
                }
            }
        }
        let w = self.word();
        w.text.push_str(&format!("`{inner}`"));
        w.dynamic = true;
        self.out.operators.push("`".to_owned());
        self.out.substitutions.push(("`".to_owned(), inner));
        self.i = j + 1;
        Ok(())
    }

    /// At `$` outside single quotes.
    fn dollar(&mut self) -> Result<(), String> {
        match self.peek(1) {
            Some('(') => self.paren_substitution(),
            Some('\'') => {
                // ANSI-C quoting: its value is computed by the shell.
                let c = &self.chars;
                let mut j = self.i + 2;
                let mut raw = String::new();
                while j < c.len() && c[j] != '\'' {
                    if c[j] == '\\' && j + 1 < c.len() {
                        raw.push(c[j]);
                        j += 1;
                    }
                    raw.push(c[j]);
                    j += 1;
                }
                if j >= c.len() {
                    return Err("unterminated $'...' quote".to_owned());
                }
                let w = self.word();
                w.mark_quoted();
                w.text.push_str(&raw);
                w.dynamic = true;
                self.i = j + 1;
                Ok(())
            }
            _ => {
                let w = self.word();
                w.text.push('$');
                w.dynamic = true;
                self.i += 1;
                Ok(())
            }
        }
    }

    fn double_quoted(&mut self) -> Result<(), String> {
        self.word().mark_quoted();
        self.i += 1;
        loop {
            match self.peek(0) {
                None => return Err("unterminated double quote".to_owned()),
                Some('"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some('\\') => match self.peek(1) {
                    Some('\n') => self.i += 2,
                    Some(c @ ('$' | '`' | '"' | '\\')) => {
                        self.word().text.push(c);
                        self.i += 2;
                    }
                    _ => {
                        self.word().text.push('\\');
                        self.i += 1;
                    }
                },
                Some('$') if self.peek(1) == Some('(') => self.paren_substitution()?,
                Some('$') => {
                    let w = self.word();
                    w.text.push('$');
                    w.dynamic = true;
                    self.i += 1;
                }
                Some('`') => self.backtick_substitution()?,
                Some(c) => {
                    self.word().text.push(c);
                    self.i += 1;
                }
            }
        }
    }

    fn redirection(&mut self) {
        // A bare number right before `<`/`>` is a file descriptor, not a word.
        if self
            .word
            .as_ref()
            .is_some_and(|w| w.quoted_at.is_none() && w.text.chars().all(|c| c.is_ascii_digit()))
        {
            self.word = None;
        }
        self.finish_word();
        let mut op = String::new();
        let first = self.chars[self.i];
        op.push(first);
        self.i += 1;
        if first == '&' {
            op.push('>');
            self.i += 1;
            if self.peek(0) == Some('>') {
                op.push('>');
                self.i += 1;
            }
        } else if first == '>' {
            if let Some(c @ ('>' | '|' | '&')) = self.peek(0) {
                op.push(c);
                self.i += 1;
            }
        } else if let Some(c @ ('<' | '&' | '>')) = self.peek(0) {
            op.push(c);
            self.i += 1;
            if c == '<' {
                if let Some(c2 @ ('<' | '-')) = self.peek(0) {
                    op.push(c2);
                    self.i += 1;
                }
            }
        }
        self.segment.push(Tok::Redirect);
        self.out.operators.push(op);
    }

    /// `\\`: escapes the next character; before a newline, joins the lines.
    fn backslash(&mut self) {
        match self.peek(1) {
            Some('\n') => self.i += 2,
            Some(next) => {
                let w = self.word();
                w.mark_quoted();
                w.text.push(next);
                self.i += 2;
            }
            None => {
                self.word().text.push('\\');
                self.i += 1;
            }
        }
    }

    /// `'...'`: taken literally.
    fn single_quoted(&mut self) -> Result<(), String> {
        let end = find_from(&self.chars, self.i + 1, '\'').ok_or("unterminated single quote")?;
        let inner: String = self.chars[self.i + 1..end].iter().collect();
        let w = self.word();
        w.mark_quoted();
        w.text.push_str(&inner);
        self.i = end + 1;
        Ok(())
    }

    /// Any other character: part of a word; globs and brace expansions make it dynamic.
    fn plain(&mut self, c: char) {
        let w = self.word();
        match c {
            '*' | '?' => w.dynamic = true,
            '[' => w.open_bracket = true,
            ']' if w.open_bracket => w.dynamic = true,
            '{' => w.open_brace = true,
            '}' if w.open_brace => w.dynamic = true,
            _ => {}
        }
        w.text.push(c);
        self.i += 1;
    }

    fn run(mut self) -> Result<Parsed, String> {
        while let Some(c) = self.peek(0) {
            match c {
                ' ' | '\t' | '\r' => {
                    self.finish_word();
                    self.i += 1;
                }
                '\n' => self.separator("\n"),
                '#' if self.word.is_none() => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.i += 1;
                    }
                }
                '\\' => self.backslash(),
                '\'' => self.single_quoted()?,
                '"' => self.double_quoted()?,
                '$' => self.dollar()?,
                '`' => self.backtick_substitution()?,
                ';' => self.separator(";"),
                '&' => match self.peek(1) {
                    Some('&') => self.separator("&&"),
                    Some('>') => self.redirection(),
                    _ => self.separator("&"),
                },
                '|' => match self.peek(1) {
                    Some('|') => self.separator("||"),
                    Some('&') => self.separator("|&"),
                    _ => self.separator("|"),
                },
                '(' => self.separator("("),
                ')' => self.separator(")"),
                '<' | '>' if self.peek(1) == Some('(') => self.paren_substitution()?,
                '<' | '>' => self.redirection(),
                _ => self.plain(c),
            }
        }
        self.finish_word();
        self.out.segments.push(self.segment);
        Ok(self.out)
    }
}

fn find_from(chars: &[char], from: usize, target: char) -> Option<usize> {
    chars
        .get(from..)?
        .iter()
        .position(|&c| c == target)
        .map(|p| from + p)
}

pub(super) fn parse(line: &str) -> Result<Parsed, String> {
    Lexer {
        chars: line.chars().collect(),
        i: 0,
        word: None,
        segment: Vec::new(),
        out: Parsed::default(),
    }
    .run()
}

/// The words of a segment without redirection operators and their targets.
pub(super) fn strip_redirections(segment: &[Tok]) -> Vec<Word> {
    let mut words = Vec::new();
    let mut skip_next = false;
    for tok in segment {
        match tok {
            Tok::Redirect => skip_next = true,
            Tok::Word(_) if skip_next => skip_next = false,
            Tok::Word(w) => words.push(w.clone()),
        }
    }
    words
}
