//! The native `ssh_config(5)` parser (OpenSSH 9.x semantics) for machines
//! without an `ssh` binary: it emulates `ssh -G`'s dump.

use super::algorithms::*;
use super::*;

/// Where a configuration line came from, for `Include` resolution.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    User,
    System,
}

/// First-obtained values, keyed by lowercase directive.
#[derive(Default)]
pub(super) struct Options {
    pub(super) single: HashMap<String, Vec<String>>,
    pub(super) multi: HashMap<String, Vec<Vec<String>>>,
    /// `ProxyJump` or `ProxyCommand`, whichever came first.
    pub(super) proxy: Option<(&'static str, String)>,
    pub(super) ignore_unknown: Option<String>,
    pub(super) want_final_pass: bool,
    pub(super) warnings: Vec<String>,
}

impl Options {
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.single
            .get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

pub(super) const ACCUMULATING: &[&str] = &[
    "identityfile",
    "certificatefile",
    "localforward",
    "remoteforward",
    "dynamicforward",
    "sendenv",
];

/// Every keyword OpenSSH 9.x (with Debian's GSSAPI patches) accepts, including
/// deprecated ones it ignores.
pub(super) const KNOWN_KEYWORDS: &[&str] = &[
    "addkeystoagent",
    "addressfamily",
    "batchmode",
    "bindaddress",
    "bindinterface",
    "canonicaldomains",
    "canonicalizefallbacklocal",
    "canonicalizehostname",
    "canonicalizemaxdots",
    "canonicalizepermittedcnames",
    "casignaturealgorithms",
    "certificatefile",
    "challengeresponseauthentication",
    "channeltimeout",
    "checkhostip",
    "cipher",
    "ciphers",
    "clearallforwardings",
    "compression",
    "compressionlevel",
    "connectionattempts",
    "connecttimeout",
    "controlmaster",
    "controlpath",
    "controlpersist",
    "dsaauthentication",
    "dynamicforward",
    "enableescapecommandline",
    "enablesshkeysign",
    "escapechar",
    "exitonforwardfailure",
    "fallbacktorsh",
    "fingerprinthash",
    "forkafterauthentication",
    "forwardagent",
    "forwardx11",
    "forwardx11timeout",
    "forwardx11trusted",
    "gatewayports",
    "globalknownhostsfile",
    "gssapiauthentication",
    "gssapiclientidentity",
    "gssapidelegatecredentials",
    "gssapikeyexchange",
    "gssapikexalgorithms",
    "gssapirenewalforcesrekey",
    "gssapiserveridentity",
    "gssapitrustdns",
    "hashknownhosts",
    "hostbasedacceptedalgorithms",
    "hostbasedauthentication",
    "hostbasedkeytypes",
    "hostkeyalgorithms",
    "hostkeyalias",
    "hostname",
    "identitiesonly",
    "identityagent",
    "identityfile",
    "ignoreunknown",
    "ipqos",
    "kbdinteractiveauthentication",
    "kbdinteractivedevices",
    "keepalive",
    "kexalgorithms",
    "knownhostscommand",
    "localcommand",
    "localforward",
    "loglevel",
    "logverbose",
    "macs",
    "nohostauthenticationforlocalhost",
    "numberofpasswordprompts",
    "obscurekeystroketiming",
    "passwordauthentication",
    "permitlocalcommand",
    "permitremoteopen",
    "pkcs11provider",
    "port",
    "preferredauthentications",
    "protocol",
    "proxycommand",
    "proxyjump",
    "proxyusefdpass",
    "pubkeyacceptedalgorithms",
    "pubkeyacceptedkeytypes",
    "pubkeyauthentication",
    "rekeylimit",
    "remotecommand",
    "remoteforward",
    "requesttty",
    "requiredrsasize",
    "revokedhostkeys",
    "rhostsauthentication",
    "rhostsrsaauthentication",
    "rsaauthentication",
    "securitykeyprovider",
    "sendenv",
    "serveralivecountmax",
    "serveraliveinterval",
    "sessiontype",
    "setenv",
    "smartcarddevice",
    "stdinnull",
    "streamlocalbindmask",
    "streamlocalbindunlink",
    "stricthostkeychecking",
    "syslogfacility",
    "tag",
    "tcpkeepalive",
    "tunnel",
    "tunneldevice",
    "updatehostkeys",
    "useblacklistedkeys",
    "uselogin",
    "useprivilegedport",
    "user",
    "userknownhostsfile",
    "useroaming",
    "usersh",
    "verifyhostkeydns",
    "visualhostkey",
    "xauthlocation",
];

pub(super) fn canonical_keyword(key: &str) -> &str {
    match key {
        "pubkeyacceptedkeytypes" => "pubkeyacceptedalgorithms",
        "hostbasedkeytypes" => "hostbasedacceptedalgorithms",
        "challengeresponseauthentication" => "kbdinteractiveauthentication",
        "keepalive" => "tcpkeepalive",
        other => other,
    }
}

/// The parsing state OpenSSH threads through `read_config_file`.
pub(super) struct Pass<'a> {
    pub(super) local: &'a LocalContext,
    /// Name `Host` lines match against.
    pub(super) host: String,
    /// Destination as typed (`Match originalhost`, `%n`).
    pub(super) original: String,
    pub(super) final_pass: bool,
    /// Reads nothing but the text given: `Include` opens no file and `Match
    /// exec` runs nothing (never matches). For fuzzing, where the text is
    /// arbitrary.
    pub(super) inert: bool,
}

pub(super) const MAX_INCLUDE_DEPTH: usize = 16;

pub(super) fn native_dump(
    req: &ConfigRequest,
    local: &LocalContext,
) -> Result<(Dump, Vec<String>), ConfigError> {
    let (dest_user, host_arg) = split_user_host(&req.host);
    let mut opts = Options::default();
    for option in &req.options {
        let line_no = 0;
        let bad = |message: String| ConfigError::BadOption {
            option: option.clone(),
            message,
        };
        let Some((keyword, args, raw)) = split_line_raw(option).map_err(bad)? else {
            continue;
        };
        if keyword == "host" || keyword == "match" || keyword == "include" {
            return Err(bad(format!("{keyword} is not allowed on the command line")));
        }
        let pass = Pass {
            local,
            host: host_arg.to_string(),
            original: host_arg.to_string(),
            final_pass: false,
            inert: false,
        };
        let mut active = true;
        apply_directive(
            &mut opts,
            &pass,
            &keyword,
            args,
            &raw,
            &mut active,
            Path::new("command-line"),
            line_no,
            FileKind::User,
            0,
            false,
        )?;
    }
    if let Some(user) = req.user.as_deref().or(dest_user) {
        opts.single
            .entry("user".into())
            .or_insert_with(|| vec![user.to_string()]);
    }
    if let Some(port) = req.port {
        opts.single
            .entry("port".into())
            .or_insert_with(|| vec![port.to_string()]);
    }
    for id in &req.identity_files {
        let path = tilde(&id.to_string_lossy(), local);
        if !Path::new(&path).exists() {
            continue;
        }
        opts.multi
            .entry("identityfile".into())
            .or_default()
            .push(vec![path]);
    }
    match req.family {
        Some(AddressFamily::Inet) => {
            opts.single
                .insert("addressfamily".into(), vec!["inet".into()]);
        }
        Some(AddressFamily::Inet6) => {
            opts.single
                .insert("addressfamily".into(), vec!["inet6".into()]);
        }
        _ => {}
    }

    let files: Vec<(PathBuf, FileKind)> = match &req.config_file {
        Some(f) if f.as_os_str() == OsStr::new("none") => Vec::new(),
        Some(f) => vec![(f.clone(), FileKind::User)],
        None => vec![
            (
                PathBuf::from(&local.home).join(".ssh/config"),
                FileKind::User,
            ),
            (PathBuf::from("/etc/ssh/ssh_config"), FileKind::System),
        ],
    };
    let explicit = req.config_file.is_some();
    let mut first = Pass {
        local,
        host: host_arg.to_string(),
        original: host_arg.to_string(),
        final_pass: false,
        inert: false,
    };
    for (i, (path, kind)) in files.iter().enumerate() {
        // `-F` must exist; the default files may not.
        let required = explicit && i == 0;
        read_config_file(&mut opts, &first, path, *kind, 0, false, required)?;
    }

    let hostname = match opts.get("hostname") {
        Some(h) => expand_hostname(h, host_arg),
        None => host_arg.to_string(),
    };
    if opts.want_final_pass {
        opts.single
            .insert("hostname".into(), vec![hostname.clone()]);
        first.host = hostname.clone();
        first.final_pass = true;
        for (path, kind) in &files {
            read_config_file(&mut opts, &first, path, *kind, 0, false, false)?;
        }
    }
    let dump = options_to_dump(&opts, local, host_arg, &hostname)?;
    Ok((dump, opts.warnings))
}

/// `HostName` accepts `%h` (the destination) and `%%` only.
pub(super) fn expand_hostname(value: &str, host_arg: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('h') => out.push_str(host_arg),
                Some('%') => out.push('%'),
                Some(o) => {
                    out.push('%');
                    out.push(o);
                }
                None => out.push('%'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub(super) fn read_config_file(
    opts: &mut Options,
    pass: &Pass<'_>,
    path: &Path,
    kind: FileKind,
    depth: usize,
    never_match: bool,
    required: bool,
) -> Result<(), ConfigError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    read_config_text(opts, pass, &text, path, kind, depth, never_match)
}

/// Applies the lines of one configuration file, `text`, read from `path`.
pub(super) fn read_config_text(
    opts: &mut Options,
    pass: &Pass<'_>,
    text: &str,
    path: &Path,
    kind: FileKind,
    depth: usize,
    never_match: bool,
) -> Result<(), ConfigError> {
    let mut active = !never_match;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let parse_err = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            line: line_no,
            message,
        };
        let Some((keyword, args, rest)) = split_line_raw(raw).map_err(parse_err)? else {
            continue;
        };
        apply_directive(
            opts,
            pass,
            &keyword,
            args,
            &rest,
            &mut active,
            path,
            line_no,
            kind,
            depth,
            never_match,
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn apply_directive(
    opts: &mut Options,
    pass: &Pass<'_>,
    keyword: &str,
    args: Vec<String>,
    raw: &str,
    active: &mut bool,
    path: &Path,
    line_no: usize,
    kind: FileKind,
    depth: usize,
    never_match: bool,
) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        line: line_no,
        message,
    };
    match keyword {
        "host" => {
            let matched = host_line_matches(&pass.host, &args);
            *active = matched && !never_match;
            return Ok(());
        }
        "match" => {
            let matched = match_line_matches(opts, pass, &args).map_err(err)?;
            *active = matched && !never_match;
            return Ok(());
        }
        "include" => {
            if depth + 1 > MAX_INCLUDE_DEPTH {
                return Err(err("Include nested too deeply".into()));
            }
            if args.is_empty() {
                return Err(err("Include needs an argument".into()));
            }
            for arg in &args {
                let expanded = tilde(arg, pass.local);
                let pattern = if Path::new(&expanded).is_absolute() {
                    expanded
                } else {
                    let base = match kind {
                        FileKind::User => PathBuf::from(&pass.local.home).join(".ssh"),
                        FileKind::System => PathBuf::from("/etc/ssh"),
                    };
                    base.join(expanded).to_string_lossy().into_owned()
                };
                let was_active = *active;
                if pass.inert {
                    continue;
                }
                for file in glob(&pattern) {
                    read_config_file(opts, pass, &file, kind, depth + 1, !was_active, false)?;
                    *active = was_active;
                }
            }
            return Ok(());
        }
        _ => {}
    }
    if !KNOWN_KEYWORDS.contains(&keyword) {
        let ignored = opts
            .ignore_unknown
            .as_deref()
            .is_some_and(|list| match_pattern_list(keyword, list, true) == 1);
        if ignored {
            return Ok(());
        }
        return Err(err(format!("Bad configuration option: {keyword}")));
    }
    if !*active {
        return Ok(());
    }
    let key = canonical_keyword(keyword);
    if args.is_empty() {
        return Err(err(format!("{keyword}: missing argument")));
    }
    match key {
        "ignoreunknown" => {
            if opts.ignore_unknown.is_none() {
                opts.ignore_unknown = Some(args.join(","));
            }
        }
        "proxyjump" | "proxycommand" => {
            if opts.proxy.is_none() {
                let which = if key == "proxyjump" {
                    "proxyjump"
                } else {
                    "proxycommand"
                };
                let value = if which == "proxycommand" {
                    raw.to_string()
                } else {
                    args.join(" ")
                };
                opts.proxy = Some((which, value));
            }
        }
        "port" => {
            parse_port("Port", &args[0]).map_err(|e| err(e.to_string()))?;
            opts.single.entry(key.into()).or_insert(args);
        }
        "stricthostkeychecking" => {
            if parse_strict(&args[0]).is_none() {
                return Err(err(format!(
                    "unsupported StrictHostKeyChecking value {:?}",
                    args[0]
                )));
            }
            opts.single.entry(key.into()).or_insert(args);
        }
        "connecttimeout" | "serveraliveinterval" => {
            if !args[0].eq_ignore_ascii_case("none") && parse_time(&args[0]).is_none() {
                return Err(err(format!("invalid time value {:?}", args[0])));
            }
            opts.single.entry(key.into()).or_insert(args);
        }
        "remotecommand" | "localcommand" | "knownhostscommand" => {
            opts.single
                .entry(key.into())
                .or_insert_with(|| vec![raw.to_string()]);
        }
        _ if ACCUMULATING.contains(&key) => {
            let v = opts.multi.entry(key.into()).or_default();
            if key == "identityfile" || key == "certificatefile" {
                v.push(vec![args[0].clone()]);
            } else {
                v.push(args);
            }
        }
        _ => {
            opts.single.entry(key.into()).or_insert(args);
        }
    }
    Ok(())
}

/// `Host` line: any positive pattern matches and no negated one does.
/// Patterns are matched case-sensitively, as OpenSSH does.
pub(super) fn host_line_matches(host: &str, patterns: &[String]) -> bool {
    let mut matched = false;
    for p in patterns {
        if let Some(neg) = p.strip_prefix('!') {
            if wildcard_match(host, neg) {
                return false;
            }
        } else if wildcard_match(host, p) {
            matched = true;
        }
    }
    matched
}

pub(super) fn match_line_matches(
    opts: &mut Options,
    pass: &Pass<'_>,
    args: &[String],
) -> Result<bool, String> {
    if args.is_empty() {
        return Err("Match needs at least one criterion".into());
    }
    let mut result = true;
    let mut i = 0;
    let ruser = opts
        .get("user")
        .map(str::to_string)
        .unwrap_or_else(|| pass.local.user.clone());
    let host = match opts.get("hostname") {
        Some(h) => expand_hostname(h, &pass.original),
        None => pass.original.clone(),
    };
    while i < args.len() {
        let raw = &args[i];
        i += 1;
        let (negate, attr_full) = match raw.strip_prefix('!') {
            Some(a) => (true, a),
            None => (false, raw.as_str()),
        };
        let (attr, inline_arg) = match attr_full.split_once('=') {
            Some((a, v)) => (a.to_ascii_lowercase(), Some(v.to_string())),
            None => (attr_full.to_ascii_lowercase(), None),
        };
        match attr.as_str() {
            "all" => {
                if negate {
                    result = false;
                }
                continue;
            }
            "canonical" | "final" => {
                if attr == "final" {
                    opts.want_final_pass |= !negate;
                }
                if pass.final_pass == negate {
                    result = false;
                }
                continue;
            }
            _ => {}
        }
        let arg = match inline_arg {
            Some(a) => a,
            None => {
                let Some(a) = args.get(i) else {
                    return Err(format!("Match {attr}: missing argument"));
                };
                i += 1;
                a.clone()
            }
        };
        let matched = match attr.as_str() {
            "host" => match_pattern_list(&host.to_ascii_lowercase(), &arg, true) == 1,
            "originalhost" => {
                match_pattern_list(&pass.original.to_ascii_lowercase(), &arg, true) == 1
            }
            "user" => match_pattern_list(&ruser, &arg, false) == 1,
            "localuser" => match_pattern_list(&pass.local.user, &arg, false) == 1,
            "exec" => {
                if !result {
                    // OpenSSH skips the command once a prior criterion failed.
                    continue;
                }
                let port = match opts.get("port") {
                    Some(p) => p.parse().unwrap_or(22),
                    None => 22,
                };
                let tokens = Tokens {
                    local: pass.local,
                    hostname: &host,
                    original: &pass.original,
                    port,
                    user: &ruser,
                    host_key_alias: opts.get("hostkeyalias"),
                };
                let cmd = tokens
                    .expand(&arg, "Match exec")
                    .map_err(|e| e.to_string())?;
                !pass.inert
                    && Command::new("/bin/sh")
                        .arg("-c")
                        .arg(&cmd)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
            }
            "localnetwork" | "tagged" => {
                opts.warnings.push(format!(
                    "Match {attr}: not evaluated by robosync's own ssh_config reader (treated as not matching)"
                ));
                false
            }
            other => return Err(format!("unsupported Match attribute {other}")),
        };
        if matched == negate {
            result = false;
        }
    }
    Ok(result)
}

/// OpenSSH `match_pattern`: `*` and `?` wildcards, whole-string match, in
/// at most len(s) × len(pattern) steps (only the last star is ever
/// backtracked to, never a tree of them). The one wildcard
/// matcher of robosync: ssh_config, known_hosts and the auth hook use it.
pub fn wildcard_match(s: &str, pattern: &str) -> bool {
    let s: Vec<char> = s.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    let (mut si, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            si += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// OpenSSH `match_pattern_list`: 1 on a positive match, -1 when a negated pattern
/// matches, 0 otherwise. `lower` lowercases the patterns (the subject must
/// already be lowercase).
pub(super) fn match_pattern_list(s: &str, list: &str, lower: bool) -> i32 {
    let mut got_positive = false;
    for sub in list.split(',') {
        let (negated, pat) = match sub.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, sub),
        };
        let pat = if lower {
            pat.to_ascii_lowercase()
        } else {
            pat.to_string()
        };
        if wildcard_match(s, &pat) {
            if negated {
                return -1;
            }
            got_positive = true;
        }
    }
    i32::from(got_positive)
}

/// Sorted paths matching a glob with `*`, `?` and `[...]`-free components.
pub(super) fn glob(pattern: &str) -> Vec<PathBuf> {
    let has_wild = |s: &str| s.contains('*') || s.contains('?');
    if !has_wild(pattern) {
        let p = PathBuf::from(pattern);
        return if p.exists() { vec![p] } else { Vec::new() };
    }
    let mut current = vec![PathBuf::from(if pattern.starts_with('/') {
        "/"
    } else {
        "."
    })];
    for comp in pattern.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for dir in &current {
            if has_wild(comp) {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| {
                        (!n.starts_with('.') || comp.starts_with('.')) && wildcard_match(n, comp)
                    })
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| dir.join(n)));
            } else {
                let p = dir.join(comp);
                if p.exists() {
                    next.push(p);
                }
            }
        }
        current = next;
    }
    current
}

#[cfg(test)]
pub(super) fn split_line(line: &str) -> Result<Option<(String, Vec<String>)>, String> {
    Ok(split_line_raw(line)?.map(|(keyword, args, _)| (keyword, args)))
}

/// Splits a configuration line into its lowercase keyword, its arguments (as
/// OpenSSH's `strdelim` + `argv_split` do) and the unsplit remainder, which
/// `ProxyCommand` and the other command directives take verbatim. `None` for
/// blank and comment lines.
pub(super) fn split_line_raw(line: &str) -> Result<Option<(String, Vec<String>, String)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let keyword = line[..end].to_ascii_lowercase();
    let mut rest = line[end..].trim_start();
    if let Some(r) = rest.strip_prefix('=') {
        rest = r.trim_start();
    }
    let args = split_args(rest)?;
    Ok(Some((keyword, args, rest.to_string())))
}

pub(super) fn split_args(s: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() || chars[i] == '#' {
            break;
        }
        let mut arg = String::new();
        let mut quote: Option<char> = None;
        while i < chars.len() {
            let c = chars[i];
            if c == '\\' && i + 1 < chars.len() && matches!(chars[i + 1], '\'' | '"' | '\\')
                || (c == '\\' && quote.is_none() && chars.get(i + 1) == Some(&' '))
            {
                arg.push(chars[i + 1]);
                i += 2;
                continue;
            }
            match quote {
                None if c.is_whitespace() => break,
                None if c == '"' || c == '\'' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ => arg.push(c),
            }
            i += 1;
        }
        if quote.is_some() {
            return Err("unterminated quote".into());
        }
        args.push(arg);
    }
    Ok(args)
}

// OpenSSH 9.2 defaults and supported lists (`ssh -G`, `ssh -Q`).
pub(super) const DEFAULT_IDENTITY_FILES: &[&str] = &[
    "~/.ssh/id_rsa",
    "~/.ssh/id_ecdsa",
    "~/.ssh/id_ecdsa_sk",
    "~/.ssh/id_ed25519",
    "~/.ssh/id_ed25519_sk",
    "~/.ssh/id_xmss",
    "~/.ssh/id_dsa",
];

/// Emulates `ssh -G`'s output from the parsed options.
pub(super) fn options_to_dump(
    opts: &Options,
    local: &LocalContext,
    host_arg: &str,
    hostname: &str,
) -> Result<Dump, ConfigError> {
    let mut dump = Dump::default();
    let user = opts
        .get("user")
        .map(str::to_string)
        .unwrap_or_else(|| local.user.clone());
    let port: u16 = match opts.get("port") {
        Some(p) => parse_port("port", p)?,
        None => 22,
    };
    dump.push("host", host_arg.to_string());
    dump.push("hostname", hostname.to_string());
    dump.push("user", user.clone());
    dump.push("port", port.to_string());
    let tokens = Tokens {
        local,
        hostname,
        original: host_arg,
        port,
        user: &user,
        host_key_alias: opts.get("hostkeyalias"),
    };
    let expand_path = |key: &str, v: &str| -> Result<String, ConfigError> {
        expand_dollar(&tokens.expand(&tilde(v, local), key)?, key)
    };

    for (key, value) in &opts.single {
        let joined = value.join(" ");
        match key.as_str() {
            "hostname" | "user" | "port" | "userknownhostsfile" | "identityagent" => {}
            "ciphers"
            | "macs"
            | "kexalgorithms"
            | "hostkeyalgorithms"
            | "pubkeyacceptedalgorithms"
            | "casignaturealgorithms" => {}
            "connecttimeout" | "serveraliveinterval" => {
                let secs = if joined.eq_ignore_ascii_case("none") {
                    "none".to_string()
                } else {
                    parse_time(&joined).unwrap_or(0).to_string()
                };
                dump.push(key, secs);
            }
            _ => dump.push(key, joined),
        }
    }
    for (key, lines) in &opts.multi {
        for line in lines {
            dump.push(key, line.join(" "));
        }
    }
    // OpenSSH turns keepalives on for batch sessions unless told otherwise.
    if opts.get("batchmode").and_then(parse_bool) == Some(true)
        && opts.get("serveraliveinterval").is_none()
    {
        dump.push("serveraliveinterval", "300".into());
    }
    if dump.all("identityfile").is_empty() {
        for id in DEFAULT_IDENTITY_FILES {
            dump.push("identityfile", (*id).to_string());
        }
    }
    match opts.get("userknownhostsfile") {
        Some(v) if v.eq_ignore_ascii_case("none") => dump.push("userknownhostsfile", "none".into()),
        _ => {
            let files: Vec<String> = match opts.single.get("userknownhostsfile") {
                Some(v) => v.clone(),
                None => vec!["~/.ssh/known_hosts".into(), "~/.ssh/known_hosts2".into()],
            };
            let expanded = files
                .iter()
                .map(|f| expand_path("userknownhostsfile", f))
                .collect::<Result<Vec<_>, _>>()?;
            dump.push("userknownhostsfile", expanded.join(" "));
        }
    }
    if opts.get("globalknownhostsfile").is_none() {
        dump.push(
            "globalknownhostsfile",
            "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2".into(),
        );
    }
    if let Some(agent) = opts.get("identityagent") {
        let value = if agent == "SSH_AUTH_SOCK" {
            agent.to_string()
        } else {
            expand_path("identityagent", agent)?
        };
        dump.push("identityagent", value);
    }
    if let Some((which, value)) = &opts.proxy {
        if !value.eq_ignore_ascii_case("none") {
            dump.push(which, value.clone());
        }
    }
    for (key, def, all) in [
        ("ciphers", DEFAULT_CIPHERS, ALL_CIPHERS),
        ("macs", DEFAULT_MACS, ALL_MACS),
        ("kexalgorithms", DEFAULT_KEX, ALL_KEX),
        ("hostkeyalgorithms", DEFAULT_KEY_ALGS, ALL_KEY_ALGS),
        ("pubkeyacceptedalgorithms", DEFAULT_KEY_ALGS, ALL_KEY_ALGS),
        ("casignaturealgorithms", DEFAULT_CA_SIG_ALGS, ALL_SIG_ALGS),
    ] {
        let configured = opts.single.get(key).map(|v| v.join(""));
        let list = assemble_algorithms(configured.as_deref(), def, all)
            .map_err(|m| bad_value(key, configured.as_deref().unwrap_or(""), &m))?;
        dump.push(key, list);
    }
    Ok(dump)
}
