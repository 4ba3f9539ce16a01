//! rsync-like filter rules (`--include`, `--exclude`, `--filter`, files of
//! rules), matched with globset.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

/// Which side of a transfer a rule applies to, as rsync's `s`/`r` modifiers.
///
/// The sender side chooses what is copied (a push's scan, a pull's remote
/// listing); the receiver side chooses what `--delete` may touch at the
/// destination (an excluded destination entry is protected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// No modifier: both sides, but the sender's alone under `--delete-excluded`.
    Both,
    /// `s`: the sender's side only (what is copied).
    Sender,
    /// `r`: the receiver's side only (what `--delete` protects).
    Receiver,
    /// `sr`: both sides even under `--delete-excluded`.
    SenderAndReceiver,
}

/// One include or exclude pattern, with rsync's meaning:
///
/// - the first rule that matches a path decides; a path no rule matches is included;
/// - a trailing `/` makes the rule match directories only;
/// - a leading `/` anchors the pattern at the transfer root;
/// - otherwise a pattern without `/` matches the name at any depth, and a pattern
///   with `/` matches the end of the path at any depth (`b/c` matches `a/b/c`);
/// - `*` and `?` do not cross `/`; `**` does, and must be a whole component
///   (`a/**/b`, `**/b`, `a/**`); `dir/***` matches `dir` and everything below it;
///   `[...]` classes and `\` escapes work;
/// - an excluded directory is not descended, so nothing below it can be included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `+` (include) rather than `-` (exclude).
    pub include: bool,
    /// The pattern, as written.
    pub pattern: String,
    /// Which side it applies to.
    pub side: Side,
}

impl Rule {
    /// `+ PATTERN`, both sides.
    pub fn include(pattern: &str) -> Rule {
        Rule {
            include: true,
            pattern: pattern.to_owned(),
            side: Side::Both,
        }
    }

    /// `- PATTERN`, both sides.
    pub fn exclude(pattern: &str) -> Rule {
        Rule {
            include: false,
            pattern: pattern.to_owned(),
            side: Side::Both,
        }
    }
}

/// The rule list in command-line order, built as rsync reads its options:
/// `!` clears what came before, `merge FILE` reads rules from a file in place.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    list: Vec<Rule>,
}

/// Merge files may merge others; a cycle must end with an error, not a hang.
const MAX_MERGE_DEPTH: usize = 16;

impl Rules {
    /// The rules, in order.
    pub fn into_vec(self) -> Vec<Rule> {
        self.list
    }

    /// An `--include` (`include`) or `--exclude` value. As rsync, a value
    /// starting with `+ ` or `- ` says itself which it is, and `!` clears.
    pub fn pattern(&mut self, text: &str, include: bool) -> Result<(), FilterError> {
        if text == "!" {
            self.list.clear();
            return Ok(());
        }
        let (include, pattern) = match (text.strip_prefix("+ "), text.strip_prefix("- ")) {
            (Some(p), _) => (true, p),
            (_, Some(p)) => (false, p),
            _ => (include, text),
        };
        self.push(text, include, pattern, Side::Both)
    }

    /// An `--include-from`/`--exclude-from` file: one pattern a line as
    /// [`Rules::pattern`]; blank lines and lines starting with `#` or `;`
    /// are ignored.
    pub fn pattern_file(&mut self, path: &Path, include: bool) -> Result<(), FilterError> {
        for line in read_lines(path)? {
            self.pattern(&line, include)?;
        }
        Ok(())
    }

    /// A `--filter` rule: `RULE[,MODIFIERS] PATTERN` or `R[MODIFIERS] PATTERN`
    /// with R one of `+ - P R H S . !` (or its long name: include, exclude,
    /// protect, risk, hide, show, merge, clear); modifiers `s` (sender only)
    /// and `r` (receiver only). `:`/dir-merge and other modifiers are refused.
    pub fn filter(&mut self, text: &str) -> Result<(), FilterError> {
        self.filter_at(text, 0)
    }

    fn filter_at(&mut self, text: &str, depth: usize) -> Result<(), FilterError> {
        let bad = |reason: &str| FilterError::Rule {
            rule: text.to_owned(),
            reason: reason.to_owned(),
        };
        let word_end = text.find([' ', '_', ',']).unwrap_or(text.len());
        let word = &text[..word_end];
        let long = [
            ("include", '+'),
            ("exclude", '-'),
            ("protect", 'P'),
            ("risk", 'R'),
            ("hide", 'H'),
            ("show", 'S'),
            ("merge", '.'),
            ("dir-merge", ':'),
            ("clear", '!'),
        ];
        // Long form: the name, optional `,modifiers`, one space or `_`, the pattern.
        // Short form: the letter, modifiers right after it, then the same.
        let (kind, rest) = match long.iter().find(|(name, _)| *name == word) {
            Some(&(_, kind)) => (
                kind,
                text[word_end..]
                    .strip_prefix(',')
                    .unwrap_or(&text[word_end..]),
            ),
            None => {
                let mut chars = text.chars();
                let kind = chars.next().ok_or_else(|| bad("empty rule"))?;
                (kind, chars.as_str())
            }
        };
        let mods_end = rest.find([' ', '_']).unwrap_or(rest.len());
        let (mods, pattern) = (&rest[..mods_end], rest.get(mods_end + 1..).unwrap_or(""));
        let (mut sender, mut receiver) = (false, false);
        for m in mods.chars() {
            match m {
                's' if "+-".contains(kind) => sender = true,
                'r' if "+-".contains(kind) => receiver = true,
                _ => {
                    return Err(bad(&format!(
                    "modifier {m:?} is not supported (robosync knows `s` and `r` on + and - rules)"
                )))
                }
            }
        }
        let side = match (sender, receiver) {
            (true, false) => Side::Sender,
            (false, true) => Side::Receiver,
            (true, true) => Side::SenderAndReceiver,
            (false, false) => Side::Both,
        };
        match kind {
            '+' | '-' => self.push(text, kind == '+', pattern, side),
            'P' | 'R' => self.push(text, kind == 'R', pattern, Side::Receiver),
            'H' | 'S' => self.push(text, kind == 'S', pattern, Side::Sender),
            '!' if pattern.is_empty() => {
                self.list.clear();
                Ok(())
            }
            '!' => Err(bad("`!` (clear) takes no pattern")),
            '.' => {
                if pattern.is_empty() {
                    return Err(bad("merge needs a file name"));
                }
                if depth >= MAX_MERGE_DEPTH {
                    return Err(bad("merge files nested too deep (a cycle?)"));
                }
                for line in read_lines(Path::new(pattern))? {
                    self.filter_at(&line, depth + 1)?;
                }
                Ok(())
            }
            ':' => Err(bad(
                "per-directory merge files (`:`/dir-merge) are not supported; use `merge FILE` with the rules in one file",
            )),
            _ => Err(bad(
                "unknown rule: use +, -, P, R, H, S, `.` (merge) or `!` (clear), e.g. `- *.tmp`",
            )),
        }
    }

    fn push(
        &mut self,
        text: &str,
        include: bool,
        pattern: &str,
        side: Side,
    ) -> Result<(), FilterError> {
        if pattern.is_empty() {
            return Err(FilterError::Rule {
                rule: text.to_owned(),
                reason: "no pattern".to_owned(),
            });
        }
        self.list.push(Rule {
            include,
            pattern: pattern.to_owned(),
            side,
        });
        Ok(())
    }
}

/// The rule lines of a file: blank lines and `#`/`;` comments dropped.
fn read_lines(path: &Path) -> Result<Vec<String>, FilterError> {
    let read_err = |source| FilterError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = std::fs::read(path).map_err(read_err)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.utf8_error(),
        ))
    })?;
    Ok(text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(str::to_owned)
        .collect())
}

/// A filter rule or file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A pattern that does not compile.
    #[error("invalid filter pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why not.
        reason: String,
    },
    /// A rule line that does not parse.
    #[error("invalid filter rule {rule:?}: {reason}")]
    Rule {
        /// The line.
        rule: String,
        /// Why not.
        reason: String,
    },
    /// A filter file that cannot be read.
    #[error("cannot read filter file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The two filters of a transfer, from one rule list.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// What is copied: rules for both sides and sender-only ones.
    pub sender: Filter,
    /// What `--delete` may not touch: rules for both sides and receiver-only
    /// ones; with `--delete-excluded`, receiver-only ones alone (rsync makes
    /// plain rules sender-only then).
    pub receiver: Filter,
    /// Both filters decide alike (no side-specific rule, no
    /// `--delete-excluded`): the receiver may prune its scan with its filter.
    pub same: bool,
}

impl Filters {
    /// Restricts both sides to the paths of a `--files-from` list: only
    /// they are copied, and `--delete` touches nothing unlisted (as rsync).
    pub fn with_list(mut self, list: Option<FileList>) -> Filters {
        let list = list.map(Arc::new);
        self.sender.list = list.clone();
        self.receiver.list = list;
        self
    }

    /// The sender's and the receiver's filters from `rules`; with
    /// `delete_excluded`, plain rules bind the sender alone (rsync).
    pub fn new(rules: &[Rule], delete_excluded: bool) -> Result<Filters, FilterError> {
        let on = |want: Side, both: bool| -> Vec<Rule> {
            rules
                .iter()
                .filter(|r| {
                    r.side == want
                        || r.side == Side::SenderAndReceiver
                        || (both && r.side == Side::Both)
                })
                .cloned()
                .collect()
        };
        Ok(Filters {
            sender: Filter::new(&on(Side::Sender, true))?,
            receiver: Filter::new(&on(Side::Receiver, !delete_excluded))?,
            same: !delete_excluded
                && rules
                    .iter()
                    .all(|r| matches!(r.side, Side::Both | Side::SenderAndReceiver)),
        })
    }
}

/// Include/exclude rules, rsync-like: first match wins. See [`Rule`].
///
/// The default filter includes everything. All rules are compiled into one
/// [`GlobSet`], so a path costs one match however many rules there are.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    set: GlobSet,
    /// Per glob of `set`: (rule index, include?, directories only?).
    rules: Vec<(usize, bool, bool)>,
    /// `--files-from`: a path must be listed as well as pass the rules.
    list: Option<Arc<FileList>>,
}

/// The paths of `--files-from`, as rsync reads them: relative to the
/// transfer root (a leading `/` or `./` is dropped), one a line, blank lines
/// and `#`/`;` comments ignored. A listed path is selected with the
/// directories leading to it (rsync's implied directories); what is below
/// a listed directory only with `recursive` (rsync's `-r`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileList {
    listed: HashSet<PathBuf>,
    implied: HashSet<PathBuf>,
    recursive: bool,
}

impl FileList {
    /// Reads the list from `path`, or from standard input for `-`.
    pub fn read(path: &Path, recursive: bool) -> Result<FileList, FilterError> {
        let read_err = |source| FilterError::Read {
            path: path.to_owned(),
            source,
        };
        let bytes = if path == Path::new("-") {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).map_err(read_err)?;
            b
        } else {
            std::fs::read(path).map_err(read_err)?
        };
        FileList::parse(&bytes, recursive)
    }

    /// The list from its bytes (names need not be UTF-8).
    pub fn parse(text: &[u8], recursive: bool) -> Result<FileList, FilterError> {
        use std::os::unix::ffi::OsStrExt;
        let mut list = FileList {
            recursive,
            ..FileList::default()
        };
        for line in text.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() || line[0] == b'#' || line[0] == b';' {
                continue;
            }
            let mut path = PathBuf::new();
            for c in Path::new(std::ffi::OsStr::from_bytes(line)).components() {
                match c {
                    Component::Normal(n) => path.push(n),
                    Component::RootDir | Component::CurDir => {}
                    Component::ParentDir | Component::Prefix(_) => {
                        return Err(FilterError::Pattern {
                            pattern: String::from_utf8_lossy(line).into_owned(),
                            reason: "a --files-from path may not leave the source with `..`".into(),
                        })
                    }
                }
            }
            if path.as_os_str().is_empty() {
                continue;
            }
            for a in path.ancestors().skip(1) {
                if !a.as_os_str().is_empty() {
                    list.implied.insert(a.to_path_buf());
                }
            }
            list.listed.insert(path);
        }
        Ok(list)
    }

    /// The listed paths, sorted.
    pub fn paths(&self) -> Vec<&Path> {
        let mut v: Vec<&Path> = self.listed.iter().map(PathBuf::as_path).collect();
        v.sort();
        v
    }

    /// Whether `path` (relative to the transfer root) is selected.
    pub fn selects(&self, path: &Path, is_dir: bool) -> bool {
        self.listed.contains(path)
            || (is_dir && self.implied.contains(path))
            || (self.recursive && path.ancestors().skip(1).any(|a| self.listed.contains(a)))
    }
}

thread_local! {
    static MATCHES: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

impl Filter {
    /// Compiles `rules` (all their patterns at once).
    pub fn new(rules: &[Rule]) -> Result<Filter, FilterError> {
        let mut set = GlobSetBuilder::new();
        let mut compiled = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let pattern = rule.pattern.as_str();
            let invalid = |reason: &str| FilterError::Pattern {
                pattern: pattern.to_owned(),
                reason: reason.to_owned(),
            };
            let (body, dir_only) = match pattern.strip_suffix('/') {
                Some(body) => (body, true),
                None => (pattern, false),
            };
            let anchored = body.strip_prefix('/');
            let body = anchored.unwrap_or(body);
            if body.is_empty() {
                return Err(invalid("empty pattern"));
            }
            if !double_stars_are_components(body.trim_end_matches("/***")) {
                return Err(invalid(
                    "`**` must be a whole path component (`a/**/b`, `**/b`, `a/**`)",
                ));
            }
            // rsync's `**` is any text, `/` included, and the slashes around
            // it are literal: `a/**/b` needs a directory between (`a/b` is
            // no match, where globset's `**/` may be empty), and so does an
            // anchored `/**/b` (`b` at the root is no match).
            let body = body.replace("/**/", "/*/**/");
            let body = match (anchored, body.starts_with("**/")) {
                (Some(_), true) => format!("*/{body}"),
                _ => body,
            };
            let body = body.as_str();
            // rsync's `dir/***` is `dir` itself (a directory only, as its
            // slash says) and everything below it.
            let globs = match body.strip_suffix("/***") {
                Some(dir) => vec![(dir.to_owned(), true), (format!("{dir}/**"), dir_only)],
                None => vec![(body.to_owned(), dir_only)],
            };
            for (glob, dir_only) in globs {
                let glob = match anchored {
                    Some(_) => glob,
                    None if glob.starts_with("**/") => glob,
                    None => format!("**/{glob}"),
                };
                let glob = GlobBuilder::new(&glob)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| invalid(&e.kind().to_string()))?;
                set.add(glob);
                compiled.push((index, rule.include, dir_only));
            }
        }
        let set = set.build().map_err(|e| FilterError::Pattern {
            pattern: e.glob().unwrap_or_default().to_owned(),
            reason: e.kind().to_string(),
        })?;
        Ok(Filter {
            set,
            rules: compiled,
            list: None,
        })
    }

    /// Whether `path` (relative to the scan root, `/`-separated, no leading `/`)
    /// passes the filter. The pull side applies the same rules to remote paths.
    pub fn includes(&self, path: &Path, is_dir: bool) -> bool {
        if self.list.as_ref().is_some_and(|l| !l.selects(path, is_dir)) {
            return false;
        }
        if self.rules.is_empty() {
            return true;
        }
        let candidate = Candidate::new(path);
        MATCHES.with(|matches| {
            let mut matches = matches.borrow_mut();
            self.set.matches_candidate_into(&candidate, &mut matches);
            matches
                .iter()
                .map(|&glob| self.rules[glob])
                .filter(|&(_, _, dir_only)| is_dir || !dir_only)
                .min_by_key(|&(index, _, _)| index)
                .is_none_or(|(_, include, _)| include)
        })
    }

    /// Whether it lets everything through (no rule, no list).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.list.is_none()
    }
}

/// globset reads a `**` inside a component (`a**b`) as `*`, silently; rsync
/// would let it cross `/`. Reject it rather than match differently.
fn double_stars_are_components(glob: &str) -> bool {
    glob.split('/')
        .all(|component| component == "**" || !component.contains("**"))
}
