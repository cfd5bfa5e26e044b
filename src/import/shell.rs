//! Just enough of the shell's grammar to read the forwarding lines of a script: words with
//! their quotes and escapes undone, `\` continuations joined, comments dropped, `$(…)` kept whole
//! as one word, and commands ended by newlines, `;`, `&`, `&&`, `||` and `|`. Redirections are
//! dropped with their target. Nothing is expanded or run.

/// One simple command of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The line it starts on, from 1.
    pub line: usize,
    pub words: Vec<String>,
    /// Its text as written (continuations and all), for reports.
    pub text: String,
}

/// The script's simple commands, in order; commands with no words are left out.
pub fn commands(script: &str) -> Vec<Command> {
    let mut lexer = Lexer {
        chars: script.char_indices().peekable(),
        script,
        line: 1,
        out: Vec::new(),
        words: Vec::new(),
        word: None,
        start: None,
        skip_target: false,
    };
    lexer.run();
    lexer.out
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    script: &'a str,
    line: usize,
    out: Vec<Command>,
    words: Vec<String>,
    word: Option<String>,
    /// Where the command being read starts: byte offset and line.
    start: Option<(usize, usize)>,
    /// The next word is a redirection's target.
    skip_target: bool,
}

impl Lexer<'_> {
    fn run(&mut self) {
        while let Some((at, c)) = self.chars.next() {
            match c {
                '\n' => {
                    self.end_command(at);
                    self.line += 1;
                }
                '\\' => match self.chars.next() {
                    // A continuation: the command goes on on the next line.
                    Some((_, '\n')) => {
                        self.end_word();
                        self.line += 1;
                    }
                    Some((_, escaped)) => self.push(at, escaped),
                    None => {}
                },
                '#' if self.word.is_none() => while self.chars.next_if(|(_, c)| *c != '\n').is_some() {},
                ' ' | '\t' | '\r' => self.end_word(),
                ';' | '|' => {
                    self.chars.next_if(|(_, n)| *n == c || *n == '&');
                    self.end_command(at);
                }
                '&' => match self.chars.peek() {
                    Some((_, '>')) => self.redirect(at),
                    Some((_, '&')) => {
                        self.chars.next();
                        self.end_command(at);
                    }
                    _ => self.end_command(at),
                },
                '>' | '<' => {
                    // `2>` and `2>&1`: a descriptor number before it is part of it.
                    if self
                        .word
                        .as_deref()
                        .is_some_and(|w| w.chars().all(|c| c.is_ascii_digit()))
                    {
                        self.word = None;
                    } else {
                        self.end_word();
                    }
                    self.redirect(at);
                }
                '\'' => {
                    self.begin(at);
                    for (_, c) in self.chars.by_ref() {
                        if c == '\'' {
                            break;
                        }
                        if c == '\n' {
                            self.line += 1;
                        }
                        self.word.get_or_insert_default().push(c);
                    }
                }
                '"' => {
                    self.begin(at);
                    while let Some((_, c)) = self.chars.next() {
                        match c {
                            '"' => break,
                            '\\' => match self.chars.next_if(|(_, n)| matches!(n, '"' | '\\' | '$' | '`' | '\n')) {
                                Some((_, '\n')) => self.line += 1,
                                Some((_, n)) => self.word.get_or_insert_default().push(n),
                                None => self.word.get_or_insert_default().push('\\'),
                            },
                            '$' if self.chars.peek().is_some_and(|(_, n)| *n == '(') => self.substitution(),
                            c => {
                                if c == '\n' {
                                    self.line += 1;
                                }
                                self.word.get_or_insert_default().push(c);
                            }
                        }
                    }
                }
                '$' if self.chars.peek().is_some_and(|(_, n)| *n == '(') => {
                    self.begin(at);
                    self.substitution();
                }
                c => self.push(at, c),
            }
        }
        self.end_command(self.script.len());
    }

    fn begin(&mut self, at: usize) {
        self.start.get_or_insert((at, self.line));
        self.word.get_or_insert_default();
    }

    fn push(&mut self, at: usize, c: char) {
        self.begin(at);
        self.word.get_or_insert_default().push(c);
    }

    /// `$(…)` copied whole into the word (nested parentheses and quotes included).
    fn substitution(&mut self) {
        let word = self.word.get_or_insert_default();
        word.push('$');
        let mut depth = 0usize;
        let mut quote = None;
        for (_, c) in self.chars.by_ref() {
            word.push(c);
            if c == '\n' {
                self.line += 1;
            }
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '(') => depth += 1,
                (None, ')') => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
    }

    /// Skips a redirection operator (`>`, `>>`, `>&`, `&>`, `<`); its target word goes too.
    fn redirect(&mut self, at: usize) {
        self.start.get_or_insert((at, self.line));
        while self.chars.next_if(|(_, c)| matches!(c, '>' | '<' | '&')).is_some() {}
        // `>&1`: the descriptor is the target.
        if self.chars.next_if(|(_, c)| c.is_ascii_digit()).is_some() {
            while self.chars.next_if(|(_, c)| c.is_ascii_digit()).is_some() {}
            return;
        }
        self.skip_target = true;
    }

    fn end_word(&mut self) {
        if let Some(word) = self.word.take() {
            if std::mem::take(&mut self.skip_target) {
                return;
            }
            self.words.push(word);
        }
    }

    fn end_command(&mut self, at: usize) {
        self.end_word();
        self.skip_target = false;
        let words = std::mem::take(&mut self.words);
        if let Some((start, line)) = self.start.take()
            && !words.is_empty()
        {
            self.out.push(Command {
                line,
                words,
                text: self.script[start..at].trim().to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(script: &str) -> Vec<(usize, Vec<String>)> {
        commands(script).into_iter().map(|c| (c.line, c.words)).collect()
    }

    fn w(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn words_quotes_comments_and_separators() {
        let script = "#!/bin/bash\nset -e  # strict\nkubectl port-forward -n 'my ns' \"svc/a\" 3000:80 &\n\necho a; echo b && echo \"c d\" || true | cat\n";
        assert_eq!(
            words(script),
            [
                (2, w(&["set", "-e"])),
                (3, w(&["kubectl", "port-forward", "-n", "my ns", "svc/a", "3000:80"])),
                (5, w(&["echo", "a"])),
                (5, w(&["echo", "b"])),
                (5, w(&["echo", "c d"])),
                (5, w(&["true"])),
                (5, w(&["cat"])),
            ]
        );
    }

    #[test]
    fn continuations_redirections_and_substitutions() {
        let script = "kubectl port-forward \\\n  svc/api \\\n  8080:80 >/dev/null 2>&1 &\nport=$(kubectl get svc x -o jsonpath='{.spec.ports[0].nodePort}' 2>/dev/null)\nsocat TCP-LISTEN:1,fork TCP:node:$port &> log &\n";
        let commands = commands(script);
        assert_eq!(commands[0].line, 1);
        assert_eq!(commands[0].words, w(&["kubectl", "port-forward", "svc/api", "8080:80"]));
        assert!(
            commands[0].text.starts_with("kubectl port-forward \\\n  svc/api"),
            "{:?}",
            commands[0].text
        );
        assert_eq!(commands[1].line, 4);
        assert_eq!(
            commands[1].words,
            w(&["port=$(kubectl get svc x -o jsonpath='{.spec.ports[0].nodePort}' 2>/dev/null)"])
        );
        assert_eq!(commands[2].line, 5);
        assert_eq!(commands[2].words, w(&["socat", "TCP-LISTEN:1,fork", "TCP:node:$port"]));
    }

    #[test]
    fn a_substitution_inside_double_quotes_stays_one_word() {
        let script = "np=\"$(kubectl get svc \"a b\" -o jsonpath=\"{.spec.ports[?(@.name=='http')].nodePort}\")\"\n";
        assert_eq!(
            words(script),
            [(
                1,
                w(&["np=$(kubectl get svc \"a b\" -o jsonpath=\"{.spec.ports[?(@.name=='http')].nodePort}\")"])
            )]
        );
    }
}
