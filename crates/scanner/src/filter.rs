//! rsync-like include/exclude rules, matched with globset.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

/// One `--include` or `--exclude` pattern, with rsync's meaning:
///
/// - the first rule that matches a path decides; a path no rule matches is included;
/// - a trailing `/` makes the rule match directories only;
/// - a leading `/` anchors the pattern at the scan root;
/// - otherwise a pattern without `/` matches the name at any depth, and a pattern
///   with `/` matches the end of the path at any depth (`b/c` matches `a/b/c`);
/// - `*` and `?` do not cross `/`; `**` does, and must be a whole component
///   (`a/**/b`, `**/b`, `a/**`); `dir/***` matches `dir` and everything below it;
///   `[...]` classes and `\` escapes work;
/// - an excluded directory is not descended, so nothing below it can be included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Include(String),
    Exclude(String),
}

impl Rule {
    /// Reads an `--exclude-from` file: one pattern per line; blank lines and lines
    /// starting with `#` or `;` are ignored; a line starting with `+ ` is an
    /// include, one starting with `- ` (or anything else) an exclude.
    pub fn read_exclude_from(path: &Path) -> Result<Vec<Rule>, FilterError> {
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
        let rules = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'))
            .map(
                |line| match (line.strip_prefix("+ "), line.strip_prefix("- ")) {
                    (Some(pattern), _) => Rule::Include(pattern.to_owned()),
                    (_, Some(pattern)) => Rule::Exclude(pattern.to_owned()),
                    _ => Rule::Exclude(line.to_owned()),
                },
            )
            .collect();
        Ok(rules)
    }

    fn pattern(&self) -> &str {
        match self {
            Rule::Include(p) | Rule::Exclude(p) => p,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("invalid filter pattern {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("cannot read filter file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
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
}

thread_local! {
    static MATCHES: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

impl Filter {
    pub fn new(rules: &[Rule]) -> Result<Filter, FilterError> {
        let mut set = GlobSetBuilder::new();
        let mut compiled = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let pattern = rule.pattern();
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
            // rsync's `dir/***` is `dir` itself and everything below it.
            let globs = match body.strip_suffix("/***") {
                Some(dir) => vec![dir.to_owned(), format!("{dir}/**")],
                None => vec![body.to_owned()],
            };
            for glob in globs {
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
                compiled.push((index, matches!(rule, Rule::Include(_)), dir_only));
            }
        }
        let set = set.build().map_err(|e| FilterError::Pattern {
            pattern: e.glob().unwrap_or_default().to_owned(),
            reason: e.kind().to_string(),
        })?;
        Ok(Filter {
            set,
            rules: compiled,
        })
    }

    /// Whether `path` (relative to the scan root, `/`-separated, no leading `/`)
    /// passes the filter. The pull side applies the same rules to remote paths.
    pub fn includes(&self, path: &Path, is_dir: bool) -> bool {
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

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// globset reads a `**` inside a component (`a**b`) as `*`, silently; rsync
/// would let it cross `/`. Reject it rather than match differently.
fn double_stars_are_components(glob: &str) -> bool {
    glob.split('/')
        .all(|component| component == "**" || !component.contains("**"))
}
