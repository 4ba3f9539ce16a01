//! One run from start to end: scan, connect, list, plan, execute, record.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use robosync_manifest::{
    compact, pick_newer, state_paths, Compacted, Journal, JournalRecord, ListingRecord, Manifest,
    ManifestError, Record,
};
use robosync_planner::{plan, Action, Kind, PlanOptions, Tree};
use robosync_scanner::{Filter, ScanOptions, Snapshot, StatCache};
use robosync_transport::{Dialer, Error, Pool, PoolOptions};

use crate::dirs::{dirs_in_place, dirs_touched, mode_mask};
use crate::failure::{
    exit_code, fail, parent_missing, redo, required_parent, transport_failure, EntryError, Failure,
    Operation, Redo, EXIT_BUSY, EXIT_CONNECT, EXIT_GUARD, EXIT_LOST, EXIT_PARTIAL, EXIT_SELECTION,
    EXIT_USAGE,
};
use crate::remote::{
    finish_small, list_remote, on_session, open_small, private_attrs, read_small, small_tmp,
    write_small,
};
use crate::run::Run;
use crate::{confirm, join, now_unix, push, remote, Direction, Job, Options, Phase};

/// Debug builds only: runs `$ROBOSYNC_TEST_BEFORE_TRANSFER` (a shell
/// command) between planning and sending, so a test can change the source
/// at exactly that point (a file vanishing, exit 24) without a race.
fn before_transfer() {
    #[cfg(debug_assertions)]
    if let Some(cmd) = std::env::var_os("ROBOSYNC_TEST_BEFORE_TRANSFER") {
        let _ = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .status();
    }
}

/// The `--files-from` paths the source lacks: errors (exit 23), as rsync's
/// `link_stat … failed`, so a typo in a list never passes silently.
fn unlisted(args: &Options, exists: impl Fn(&Path) -> bool) -> Vec<EntryError> {
    let Some(list) = &args.files_list else {
        return Vec::new();
    };
    list.paths()
        .into_iter()
        .filter(|p| !exists(p))
        .map(|p| {
            let msg = format!(
                "{}: listed in --files-from but not in the source",
                robosync_planner::escape(p)
            );
            EntryError::at(p, Operation::Select, msg)
        })
        .collect()
}

/// Where robosync keeps its state unless told: `$XDG_STATE_HOME/robosync`,
/// else `~/.local/state/robosync`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("robosync");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/robosync"),
        None => PathBuf::from(".robosync-state"),
    }
}

/// Opens the pool; `work` says (once the scan knows) whether the run will
/// likely have enough to do for more connections (see [`Pool::open_expecting`]).
pub async fn open_pool(
    args: &Options,
    run: &Arc<Run>,
    dialer: Arc<dyn Dialer>,
    work: impl std::future::Future<Output = bool> + Send + 'static,
) -> Result<Arc<Pool>, Failure> {
    // MFA hosts: one login, all channels on it.
    let connections = if dialer.one_login() {
        1
    } else {
        args.connections.unwrap_or(2).max(1)
    };
    let events = {
        let run = run.clone();
        Arc::new(move |e| run.pool_event(e))
    };
    let pool = Pool::open_expecting(
        dialer,
        PoolOptions {
            connections,
            channels: args.channels.unwrap_or(8).max(1),
            retry_for: args.retry_for,
            // Measured (README, Benchmarks): across 50 ms, 2 × 8 channels
            // moved 256 MiB 1.2× faster than 2 × 4. Near, the CPU is the
            // limit, and each connection's sshd decrypts on one core: a 1 GiB
            // push took 1.53 s on 2 × 2 against 1.61 s on 1 × 4 (medians of
            // 6, interleaved), with less spread; small files and pulls tied.
            // Hosts needing interactive auth keep one login: 1 × 4.
            when_near: (args.connections.is_none() || args.channels.is_none()).then(|| {
                let near_connections = match args.connections {
                    Some(_) => connections,
                    None => connections.min(2),
                };
                (
                    near_connections,
                    args.channels.unwrap_or((4 / near_connections).max(1)),
                )
            }),
        },
        work,
        events,
    )
    .await
    .map_err(|e| match exit_code(&e) {
        // Never connected, so nothing was lost: the login kept failing
        // (e.g. a ProxyJump host that is down) within --retry-for.
        EXIT_LOST => fail(EXIT_CONNECT, e.to_string()),
        _ => transport_failure(e),
    })?;
    Ok(pool)
}

/// Loads the best manifest: local (with its journal folded in) or the destination's copy.
/// `local` is [`compact`]'s result on this pair's state files.
pub fn choose_manifest(
    run: &Run,
    local: Result<Compacted, ManifestError>,
    paths: &robosync_manifest::StatePaths,
    remote_copy: Option<&[u8]>,
) -> (Manifest, Vec<JournalRecord>) {
    let (manifest_path, journal_path) = (&paths.manifest, &paths.journal);
    let (local, pending) = match local {
        Ok(c) => {
            if c.torn_tail {
                run.note(format!(
                    "journal {} ended in a torn record ({} bytes ignored)",
                    journal_path.display(),
                    c.dropped_bytes
                ));
            }
            (
                Some(c.manifest).filter(|m| !m.files.is_empty() || m.run_id > 0),
                c.pending,
            )
        }
        Err(e) => {
            run.warn(&format!(
                "{e}; ignoring robosync's records and comparing the whole destination"
            ));
            let _ = std::fs::remove_file(manifest_path);
            let _ = std::fs::remove_file(journal_path);
            (None, Vec::new())
        }
    };
    let remote = remote_copy.and_then(|b| match Manifest::decode(b) {
        Ok(m) => Some(m),
        Err(e) => {
            run.warn(&format!(
                "the destination's manifest copy is unusable ({e}); comparing the whole destination"
            ));
            None
        }
    });
    let (m, choice) = pick_newer(local, remote);
    run.note(choice.to_string());
    (m.unwrap_or_default(), pending)
}

/// Runs `job`: its entry errors, or what stopped it. Written once for both
/// directions; where they differ (which side is scanned, where the lease and
/// the manifest copy live, which executor moves the bytes) it says so.
pub async fn run(job: Job, run: &Arc<Run>) -> Result<Vec<EntryError>, Failure> {
    let Job {
        direction,
        local: local_root,
        remote: remote_path,
        filters,
        label,
        dialer,
        options,
        rename,
        creatable,
    } = job;
    let args = &options;
    let push = direction == Direction::Push;
    let local_root = local_root.as_path();
    let rename = rename.as_ref();

    // The local root, this pair's state and its lock.
    let exists = local_root_exists(direction, local_root)?;
    // rsync -a's `.`: a push's root takes the source directory's attributes.
    let root_meta = std::fs::metadata(local_root).ok();
    let abs_local = std::fs::canonicalize(local_root).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(local_root))
            .unwrap_or_else(|_| local_root.to_path_buf())
    });
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let abs_shown = abs_local.to_string_lossy();
    let paths = match direction {
        Direction::Push => state_paths(&state_dir, &abs_shown, &label),
        Direction::Pull => state_paths(&state_dir, &label, &abs_shown),
    };
    let _held = hold_state(&paths)?;
    // Names the pair for `robosync state list`; only that listing misses
    // it if it cannot be written (the run's own state errors come later).
    let _ = crate::state::record_pair(&paths, direction, &abs_shown, &label);
    // A pull's destination is here: its lease now (see crate::lease). A
    // push's is taken with the destination made, below.
    let had_state = local_root.join(".robosync").exists();
    let mut local_lease = match direction {
        Direction::Pull => {
            crate::pull::take_leases(args, run, local_root, &abs_local, &state_dir, exists)?
        }
        Direction::Push => Default::default(),
    };
    // Made by the lease just now: removed again if the source is a file.
    let state_made = local_lease.has_lease() && !had_state;

    // The local side is scanned while the pool connects.
    let (count, counted) = tokio::sync::oneshot::channel();
    let (predict, work) = tokio::sync::oneshot::channel();
    let scan = {
        let root = local_root.to_path_buf();
        let state = paths.clone();
        let filter = match direction {
            Direction::Push => filters.sender.clone(),
            // Pruning a destination's scan is exact only when both sides decide alike.
            Direction::Pull if filters.same => filters.receiver.clone(),
            Direction::Pull => Filter::default(),
        };
        let checksum = args.checksum;
        let progress = Arc::new(robosync_scanner::ScanProgress::default());
        run.scanning(progress.clone());
        // A single file pushed is known by its destination name from the scan on.
        let renamed = rename.filter(|_| push).cloned();
        tokio::task::spawn_blocking(move || {
            // --checksum: every local file read again, never the cache's word.
            let mut cache = if checksum {
                StatCache::default()
            } else {
                StatCache::load(&state.stat_cache)
            };
            // Last run's journal folded in now, off the critical path.
            let local = compact(&state.manifest, &state.journal);
            let snap = if exists {
                let opts = ScanOptions {
                    filter,
                    ignore_cache: checksum,
                    progress: Some(progress),
                };
                robosync_scanner::scan(&root, &opts, &mut cache)
            } else {
                Ok(Snapshot::default())
            };
            let scanned = snap.map(|mut snap| {
                if let Some(r) = &renamed {
                    for e in snap.entries.iter_mut().filter(|e| e.path == r.from) {
                        e.path = r.to.clone();
                    }
                }
                let _ = count.send(snap.entries.len());
                if push {
                    let known = local.as_ref().ok().map(|c| &c.manifest);
                    let _ = predict.send(likely_work(&snap, known));
                }
                LocalScan::new(snap, push)
            });
            (scanned, cache, local)
        })
    };
    // A dry run transfers nothing: no logins ahead of need. What a pull
    // has to do is known only from the listing.
    let dry_run = args.dry_run;
    let work = async move { push && !dry_run && work.await.unwrap_or(false) };
    let pool = open_pool(args, run, dialer, work).await?;
    run.phase(Phase::Scanning);
    {
        // Both sides hold about as many entries (a rerun's, at least).
        let pool = pool.clone();
        tokio::spawn(async move {
            if let Ok(n) = counted.await {
                pool.widen_for_listing(n);
            }
        });
    }

    let remote_root = on_session(&pool, |s| {
        let path = &remote_path;
        async move { remote::expand_home(&s, path).await }
    })
    .await
    .map_err(transport_failure)?;
    if !push && rename.is_none() && !crate::endpoint::means_contents(&remote_path) {
        // `host:x/link` copies the symlink itself, as rsync (listing it
        // would follow it): it goes the single-entry way.
        let root = &remote_root;
        let stat = on_session(&pool, |s| async move { s.lstat(root).await }).await;
        if stat.is_ok_and(|a| a.is_symlink()) {
            std::mem::take(&mut local_lease).release(local_root, state_made);
            return Err(redo(
                Redo::SourceIsFile,
                format!("source {label} is a symlink"),
            ));
        }
    }
    let session = pool.session().await.map_err(transport_failure)?;
    let manifest_remote = join(&remote_root, b".robosync/manifest");
    // A push's destination, listing and manifest copy at once: each is a
    // few round trips, and a missing destination just lists empty.
    let destination = async {
        if !push {
            return Ok::<_, Failure>(None);
        }
        if args.dry_run {
            // A dry run changes nothing: no lease, a warning if one is live.
            if let Some(w) = crate::lease::peek_remote(&session, &remote_root).await {
                run.warn(&w);
            }
            return Ok(None);
        }
        // Again on a new session when the link drops meanwhile: the
        // MKDIRs are idempotent, and the lease knows its own.
        let mut s = session.clone();
        loop {
            match prepare_destination(&pool, &s, &remote_root, &state_dir, &label, creatable).await
            {
                Err(f) if f.code == EXIT_LOST => {
                    pool.repair().await.map_err(transport_failure)?;
                    s = pool.session().await.map_err(transport_failure)?;
                }
                r => return r.map(Some),
            }
        }
    };
    let remote_copy = async {
        match push {
            true => read_small(&session, &manifest_remote).await,
            false => None,
        }
    };
    // A single file's run lists its name alone (push: a directory in the
    // way whole; pull: nothing below, a directory there is refused).
    let only = rename.map(|r| match direction {
        Direction::Push => r.to.as_os_str().as_bytes(),
        Direction::Pull => &b""[..],
    });
    // A push's destination: confirmed against the record of the last
    // clean run when it may be (see crate::confirm), else listed whole.
    // A pull's source is always listed whole.
    let quick = match push && rename.is_none() {
        true => {
            let path = paths.listing.clone();
            let record = tokio::task::spawn_blocking(move || ListingRecord::load(&path))
                .await
                .ok()
                .flatten();
            Some(confirm::full_listing_reason(args, record, now_unix()))
        }
        false => None,
    };
    let listed = async {
        let record = match quick {
            Some(Ok(record)) => record,
            Some(Err(why)) => {
                let (listing, copy) =
                    futures::join!(list_remote(&pool, &remote_root, only), remote_copy);
                return (listing, copy, Listed::Full(why));
            }
            None => {
                let (listing, copy) =
                    futures::join!(list_remote(&pool, &remote_root, only), remote_copy);
                return (listing, copy, Listed::Full(String::new()));
            }
        };
        let confirming = on_session(&pool, |_| confirm::confirm(&pool, &remote_root, &record));
        let (copy, confirmed) = futures::join!(remote_copy, confirming);
        let why = match confirmed {
            _ if !confirm::copy_agrees(&record, copy.as_deref()) => {
                "the destination's manifest copy is not the one recorded"
            }
            Ok(Some(c)) => {
                let how = Listed::Quick {
                    record,
                    dirs: c.dirs,
                    listed: c.listed,
                };
                return (Ok(c.listing), copy, how);
            }
            Ok(None) => "a recorded directory is gone or no longer a directory",
            Err(e) => return (Err(e), copy, Listed::Full(String::new())),
        };
        let listing = list_remote(&pool, &remote_root, only).await;
        (listing, copy, Listed::Full(why.into()))
    };
    let listed = futures::future::join(destination, listed);
    let scanned = async {
        let r = scan.await.expect("scan task panicked");
        run.phase(Phase::Listing);
        r
    };
    let ((scanned, cache, local), (made, (listing, remote_copy, mut listed))) =
        futures::join!(scanned, listed);
    run.phase(Phase::Planning);
    let _identity = made?;
    let mut listing = listing.map_err(transport_failure)?;
    if let Listed::Quick { record, .. } = &listed {
        // The record holds for the manifest it was written with; a local
        // manifest that moved on since (or an interrupted run's journal)
        // means the destination may hold more than it says.
        let agrees = local
            .as_ref()
            .is_ok_and(|c| c.pending.is_empty() && record.matches(&c.manifest));
        if !agrees {
            listing = list_remote(&pool, &remote_root, only)
                .await
                .map_err(transport_failure)?;
            listed = Listed::Full("the local manifest is not the one recorded".into());
        }
    }
    match &listed {
        Listed::Quick { dirs, listed, .. } => run.note(format!(
            "listing: confirmed {dirs} directories of the destination by their mtime, \
             listed {listed} that changed since the last run (--full-listing lists all)"
        )),
        Listed::Full(why) if !why.is_empty() => {
            run.note(format!("listing: the whole destination ({why})"))
        }
        Listed::Full(_) => {}
    }
    if !push && listing.root_missing {
        let f = crate::pull::missing_source(&pool, &remote_root, &label, rename).await;
        if f.redo.is_some() {
            // Not a tree after all: no state of ours stays behind in what
            // is the user's directory (DEST/NAME where a file was asked for).
            std::mem::take(&mut local_lease).release(local_root, state_made);
        }
        return Err(f);
    }
    if let Some(r) = rename {
        let there = listing.tree.nodes.get(match direction {
            Direction::Push => &r.to,
            Direction::Pull => &r.from,
        });
        let is_dir = there.is_some_and(|n| n.kind == Kind::Dir);
        match direction {
            Direction::Push if r.or_into && is_dir => {
                return Err(redo(
                    Redo::DestIsDir,
                    format!("{} is a directory", r.to.display()),
                ));
            }
            Direction::Pull if there.is_none() => {
                return Err(crate::pull::no_source(&label));
            }
            Direction::Pull if is_dir => {
                return Err(fail(
                    EXIT_SELECTION,
                    format!(
                        "destination {} is not a directory, and source {label} is one",
                        local_root.join(&r.to).display()
                    ),
                ));
            }
            _ => {}
        }
    }
    let scanned = scanned.map_err(|e| {
        fail(
            EXIT_USAGE,
            format!("cannot scan {}: {e}", local_root.display()),
        )
    })?;
    let LocalScan {
        tree: local_tree,
        entries,
        snap,
    } = scanned;
    let mut errors = match direction {
        Direction::Push => unlisted(args, |p| local_root.join(p).symlink_metadata().is_ok()),
        Direction::Pull => unlisted(args, |p| listing.tree.nodes.contains_key(p)),
    };
    errors.extend(listing.errors.iter().cloned());
    for e in &snap.errors {
        let path = robosync_planner::escape(&e.path);
        if e.vanished && push {
            run.vanished(&path);
        } else {
            let msg = format!("{path}: {}", e.message);
            errors.push(EntryError::at(&e.path, Operation::Read, msg));
        }
    }
    if push {
        for s in &snap.skipped {
            run.warn(&format!(
                "skipping {:?} {} (not a regular file, directory or symlink)",
                s.kind,
                robosync_planner::escape(&s.path)
            ));
        }
    }
    run.note(format!(
        "scanned {} entries ({} hashed, {} from cache)",
        local_tree.nodes.len(),
        snap.stats.files_hashed,
        snap.stats.cache_hits
    ));
    let cache_unchanged = snap.stats.cache_unchanged;

    // A clean push of a tree records the destination it leaves, for the
    // next run to confirm (see crate::confirm): here the destination as seen.
    let recording = push && rename.is_none() && args.backup_dir.is_none() && !args.dry_run;
    let mut seen = None;
    // Source and destination trees, each as its side saw it; a
    // destination's excluded entries are protected from --delete (rsync).
    let (mut source, mut dest, stale_local_temps) = match direction {
        Direction::Push => {
            let mut dest = std::mem::take(&mut listing.tree);
            if recording {
                seen = Some(dest.clone());
            }
            if let Some(b) = args.backup_dir.as_ref().filter(|b| b.is_relative()) {
                // A backup dir inside the destination is not part of the mirror.
                dest.nodes.retain(|p, _| !p.starts_with(b));
            }
            let dest = remote::protected(dest, &local_tree, &filters.receiver, &[]);
            (local_tree, dest, Vec::new())
        }
        Direction::Pull => {
            let mut source = remote::included(std::mem::take(&mut listing.tree), &filters.sender);
            if let Some(r) = rename {
                // The file is known by its local name from here on.
                crate::pull::rename_node(&mut source, &r.from, &r.to);
            }
            let (dest, temps) = crate::pull::destination_tree(
                local_tree, &source, &snap, &filters, local_root, args,
            );
            (source, dest, temps)
        }
    };

    // A pull's destination is made now that the source is known to exist.
    let local_dest = match direction {
        Direction::Pull => Some(crate::pull::open_destination(
            args,
            local_root,
            exists,
            creatable,
            &mut local_lease,
        )?),
        Direction::Push => None,
    };
    // The destination's manifest copy: read with the listing (push), or
    // from the local destination (pull).
    let copy = match &local_dest {
        Some(Some(root)) => root.read_small(&[remote::STATE_DIR, b"/manifest"].concat()),
        _ => remote_copy,
    };
    let (mut manifest, pending) = choose_manifest(run, local, &paths, copy.as_deref());
    // Records of files no longer at the destination mean nothing.
    dest.forget_missing(&mut manifest);
    if args.checksum {
        // rsync -c: the remote side's content too, for every file whose
        // size would let it pass as unchanged (never the records' word).
        let (remote_tree, local_tree) = match direction {
            Direction::Push => (&mut dest, &source),
            Direction::Pull => (&mut source, &dest),
        };
        // A pull reads the file under its remote name.
        let local_name = |p: &Path| match rename {
            Some(r) if !push && p == r.from => r.to.clone(),
            _ => p.to_path_buf(),
        };
        let same_size = |p: &Path, n: &robosync_planner::Node| {
            local_tree
                .nodes
                .get(&local_name(p))
                .is_some_and(|l| l.size == n.size)
        };
        let renamed = rename.filter(|_| !push);
        if let Some(r) = renamed {
            crate::pull::rename_node(remote_tree, &r.to, &r.from);
        }
        errors.extend(remote::hash_files(&pool, &remote_root, remote_tree, same_size).await);
        if let Some(r) = renamed {
            crate::pull::rename_node(remote_tree, &r.from, &r.to);
        }
    } else if !push {
        // A remote file whose stat still matches what robosync fetched last
        // time has the content recorded then: the planner sees it unchanged.
        crate::pull::recorded_content(&mut source, &manifest);
    }

    let opts = PlanOptions {
        delete: args.delete,
        max_delete: args.max_delete,
        // Deltas are built at the destination: only a push has remote hashes to build from.
        delta: push && (session.extensions.copy_data || args.inplace),
        ..Default::default()
    };
    let source_label = match direction {
        Direction::Push => local_root.display().to_string(),
        Direction::Pull => label.clone(),
    };
    let (plan, guard) = plan_guarded(
        &source,
        &dest,
        &manifest,
        &source_label,
        &opts,
        args.dry_run,
    )?;
    errors.extend(plan.refused.iter().cloned().map(EntryError::from));
    for w in &plan.warnings {
        run.warn(w);
    }
    run.stats.skipped.store(plan.unchanged, Ordering::Relaxed);
    if args.dry_run {
        pool.close().await;
        return preview(run, &plan, guard, errors);
    }
    if worth_more_sessions(&plan) {
        pool.expand();
    }
    if !errors.is_empty() && args.delete {
        // An incomplete view of the source must never decide deletions.
        run.warn("not deleting anything: the source could not be read completely");
    }

    // What the destination holds once every action landed; the record
    // of the last run goes until this one ends clean.
    let after = seen.map(|d| confirm::tree_after(d, &source, &plan.actions));
    if push {
        if let Err(e) = robosync_manifest::forget_listing(&paths.listing) {
            run.warn(&format!(
                "cannot remove {}: {e}; the next run lists the whole destination",
                paths.listing.display()
            ));
        }
    }
    // Files the destination already holds and the manifest lacks are
    // recorded, so the next run can trust (and delta) them.
    adopt_unchanged(&mut manifest, &source, &dest, direction, &entries);
    let in_place = dirs_in_place(&source, &dest, direction);
    start_journal(run, &paths, &mut manifest, &plan)?;
    let partials = Mutex::new(push::partials(&pending));
    let executor = match local_dest {
        None => Executor::Upload(Arc::new(push::Push {
            run: run.clone(),
            pool: pool.clone(),
            local_root: local_root.to_path_buf(),
            remote_root: remote_root.clone(),
            entries,
            partials,
            manifest: Mutex::new(manifest),
            data: push::ReadAhead::for_sessions(pool.capacity()),
            slots: Default::default(),
            dirs_in_place: in_place,
            temps: Default::default(),
            root_real: Default::default(),
            local_names: rename
                .map(|r| HashMap::from([(r.to.clone(), r.from.clone())]))
                .unwrap_or_default(),
            hard_links: args.hard_links,
        })),
        Some(root) => {
            let root = root.expect("a real run opens its destination");
            let backup = crate::pull::open_backup(args, &root)?;
            source.nodes.retain(|p, _| !p.as_os_str().is_empty());
            Executor::Download(Arc::new(crate::pull::Pull {
                run: run.clone(),
                pool: pool.clone(),
                root: Arc::new(root),
                landing: crate::pull::Landing::new(crate::pull::LANDING_THREADS),
                backup,
                remote_root: remote_root.clone(),
                source,
                partials,
                manifest: Mutex::new(manifest),
                data: push::ReadAhead::for_sessions(pool.capacity()),
                slots: Default::default(),
                dirs_in_place: in_place,
                remote_names: rename
                    .map(|r| HashMap::from([(r.to.clone(), r.from.clone())]))
                    .unwrap_or_default(),
            }))
        }
    };

    // Timer checkpoints keep the journal durable while appends pause.
    let ticker = {
        let run = run.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                run.checkpoint();
            }
        })
    };
    let (content, deletes): (Vec<Action>, Vec<Action>) = split_deletes(plan.actions);
    // A push's manifest copy opens its temp file while the files go:
    // storing it afterwards then takes two round trips, not three.
    let records_change = content.iter().any(|a| {
        matches!(
            a,
            Action::Copy { .. } | Action::Delta { .. } | Action::SetAttrs { .. }
        )
    });
    let copy_opened = (push && records_change).then(|| {
        let (pool, path) = (pool.clone(), manifest_remote.clone());
        tokio::spawn(async move {
            let s = pool.session().await?;
            let h = open_small(&s, &path).await?;
            Ok::<_, Error>((s, h))
        })
    });
    let root_touched = dirs_touched(&content)
        .into_iter()
        .chain(dirs_touched(&deletes))
        .any(|d| d.as_os_str().is_empty());
    before_transfer();
    let mut run_errors = executor.execute(content, false).await;
    if run_errors.is_empty() && errors.is_empty() {
        run_errors.extend(executor.execute(deletes, true).await);
    } else if !deletes.is_empty() {
        run.warn(&format!(
            "skipped {} deletion(s) because of errors above",
            deletes.len()
        ));
    }
    if run_errors.is_empty() && errors.is_empty() && rename.is_none() {
        // rsync -a's `.`: the sync root takes the source directory's mode
        // and mtime, after its contents changed it.
        let set = match &executor {
            Executor::Upload(job) => job.set_root_attrs(root_meta.as_ref(), root_touched).await,
            Executor::Download(job) => job.set_root_attrs().await,
        };
        if let Err(e) = set {
            let shown = match direction {
                Direction::Push => label.clone(),
                Direction::Pull => local_root.display().to_string(),
            };
            let msg = format!("cannot set attributes of {shown}: {e}");
            run_errors.push(EntryError::at(Path::new(""), Operation::SetAttributes, msg));
        }
    }
    ticker.abort();
    run.phase(Phase::Recording);
    errors.extend(run_errors);
    if push
        && errors
            .iter()
            .any(|e| e.message.contains(crate::space::REMOTE_HINT))
    {
        if let Some((bytes, files)) = crate::space::remote_temps(&pool, &remote_root).await {
            errors.push(crate::space::temps_held(bytes, files).into());
        }
    }

    // Record what the destination now holds, locally and at the
    // destination at once: both record the same state, so whichever lands
    // first, the next run starts from what is there.
    let manifest = Arc::new(executor.manifest());
    // The record needs everything to have landed, and the root's attributes set.
    let clean = errors.is_empty() && run.vanished_list().is_empty() && pool.gave_up().is_none();
    let root_attrs = root_meta.as_ref().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.mtime().clamp(0, u32::MAX as i64), m.mode() & 0o7777)
    });
    let quick_record = match listed {
        Listed::Quick { record, .. } => Some(record),
        Listed::Full(_) => None,
    };
    let recorded = {
        let (run, manifest, paths) = (run.clone(), manifest.clone(), paths.clone());
        let after = after.filter(|_| clean).zip(root_attrs);
        tokio::task::spawn_blocking(move || {
            let mut errors = Vec::new();
            record_locally(&run, &manifest, &paths, &mut errors);
            if let (Some((after, root)), true) = (after, errors.is_empty()) {
                let record =
                    confirm::record_of(&after, root, &manifest, quick_record.as_ref(), now_unix());
                if let Err(e) = record.save(&paths.listing) {
                    run.warn(&format!("{e}; the next run lists the whole destination"));
                }
            }
            errors
        })
    };
    match &executor {
        Executor::Upload(_) => {
            let opened = match copy_opened {
                Some(task) => task.await.ok().and_then(Result::ok),
                None => None,
            };
            let current = copy_is_current(&manifest, copy.as_deref());
            store_remote_copy(run, &pool, &manifest_remote, &manifest, opened, current).await?;
        }
        Executor::Download(job) => {
            if let Err(e) = job
                .root
                .write_small(remote::STATE_DIR, b"manifest", &manifest.encode())
            {
                run.warn(&format!(
                    "could not store the manifest copy in the destination: {e}"
                ));
            }
        }
    }
    errors.extend(recorded.await.expect("recording the manifest panicked"));

    // Temp files no attempt will resume.
    match &executor {
        Executor::Upload(job) => remove_remote_temps(run, &pool, job, &listing.temps).await,
        Executor::Download(job) if errors.is_empty() => {
            // Those of interrupted runs that this run did not resume.
            for t in &stale_local_temps {
                let _ = job.root.remove(t);
            }
        }
        Executor::Download(_) => {}
    }
    crate::lease::HELD.release().await;
    drop(local_lease);
    let cache = (!cache_unchanged).then_some(&cache);
    close_run(run, &pool, cache, &paths, args.verbose > 0).await;
    unless_lost(run, &pool, errors)
}

/// Whether the local root is there: a push's source must be a directory; a
/// pull's destination is a directory or is made.
fn local_root_exists(direction: Direction, root: &Path) -> Result<bool, Failure> {
    let what = match direction {
        Direction::Push => "source",
        Direction::Pull => "destination",
    };
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(fail(
            // A file where DEST must be a directory: rsync's 3.
            match direction {
                Direction::Push => EXIT_USAGE,
                Direction::Pull => EXIT_SELECTION,
            },
            format!(
                "{what} {} is not a directory (robosync copies trees)",
                root.display()
            ),
        )),
        Err(_) if direction == Direction::Pull => Ok(false),
        Err(e) => Err(fail(EXIT_USAGE, format!("{what} {}: {e}", root.display()))),
    }
}

/// How a run came by the remote tree.
enum Listed {
    /// Listed whole: why (empty when there was no choice: a pull, a single file).
    Full(String),
    /// Confirmed against the record: its `dirs` directories stated, `listed` of them listed.
    Quick {
        record: ListingRecord,
        dirs: usize,
        listed: usize,
    },
}

/// The local scan, as trees and (for a push, whose executor reads them) entries.
struct LocalScan {
    tree: Tree,
    entries: HashMap<PathBuf, robosync_scanner::Entry>,
    /// The rest of the snapshot: errors, skipped and excluded entries, statistics.
    snap: Snapshot,
}

impl LocalScan {
    fn new(mut snap: Snapshot, keep_entries: bool) -> LocalScan {
        let tree = Tree::from_snapshot(&snap);
        let entries = match keep_entries {
            true => std::mem::take(&mut snap.entries)
                .into_iter()
                .map(|e| (e.path.clone(), e))
                .collect(),
            false => HashMap::new(),
        };
        LocalScan {
            tree,
            entries,
            snap,
        }
    }
}

/// The data plane of the run's direction.
enum Executor {
    Upload(Arc<push::Push>),
    Download(Arc<crate::pull::Pull>),
}

impl Executor {
    /// Runs actions in plan order; `removals`: these are the `--delete`
    /// removals (`--backup-dir` applies). Directory attributes come last.
    async fn execute(&self, actions: Vec<Action>, removals: bool) -> Vec<EntryError> {
        match self {
            Executor::Upload(p) => p.execute(actions).await,
            Executor::Download(p) => p.execute(actions, removals).await,
        }
    }

    fn manifest(&self) -> Manifest {
        match self {
            Executor::Upload(p) => p.manifest.lock().unwrap().clone(),
            Executor::Download(p) => p.manifest.lock().unwrap().clone(),
        }
    }
}

/// Records, for files the manifest lacks but the quick check found equal
/// (same kind, size and mtime), what the local side's scan hashed: the next
/// run can then trust them and build deltas from them.
fn adopt_unchanged(
    manifest: &mut Manifest,
    source: &Tree,
    dest: &Tree,
    direction: Direction,
    entries: &HashMap<PathBuf, robosync_scanner::Entry>,
) {
    let mask = mode_mask(direction);
    for (p, s) in &source.nodes {
        let key = p.as_os_str().as_bytes();
        if s.kind != Kind::File || manifest.files.contains_key(key) {
            continue;
        }
        let Some(d) = dest.nodes.get(p).filter(|d| d.kind == Kind::File) else {
            continue;
        };
        if d.size != s.size || d.mtime != s.mtime {
            continue;
        }
        // The content's hashes come from the local side: a push's source, a pull's destination.
        let local = match direction {
            Direction::Push => s,
            Direction::Pull => d,
        };
        let Some(whole) = local.whole else {
            continue;
        };
        // A push's scan knows the mtime to the nanosecond.
        let mtime_ns = entries
            .get(p)
            .map_or(s.mtime * 1_000_000_000, |e| e.mtime_ns);
        manifest.files.insert(
            key.to_vec(),
            Record {
                size: s.size,
                mtime_ns,
                mode: s.mode & mask,
                whole,
                // A file of one block is known by its whole hash alone.
                blocks: match local.blocks.len() {
                    0 | 1 => Vec::new(),
                    _ => local.blocks.clone(),
                },
                remote_size: d.size,
                remote_mtime: d.mtime,
            },
        );
    }
}

/// Stores a push's manifest copy at the destination: finishing the temp
/// file `opened` during the transfer, or the whole way afresh. Nothing to
/// do when the copy read at the start is already `current`.
async fn store_remote_copy(
    run: &Run,
    pool: &Pool,
    path: &[u8],
    manifest: &Manifest,
    opened: Option<(Arc<robosync_transport::Sftp>, Vec<u8>)>,
    current: bool,
) -> Result<(), Failure> {
    if current {
        run.note("the destination's manifest copy is current".into());
        if let Some((s, h)) = opened {
            // Opened for nothing: the copy stays as it is, its temp file goes.
            s.close_detached(&h);
            let _ = s.remove(&small_tmp(path)).await;
        }
        return Ok(());
    }
    let data = manifest.encode();
    let early = match opened {
        Some((s, h)) => finish_small(&s, &h, path, &data).await.is_ok(),
        None => false,
    };
    // Not opened, a session lost meanwhile, or a refusal: the whole way, afresh.
    let stored = if early {
        Ok(())
    } else {
        let session = pool.session().await.map_err(transport_failure)?;
        write_small(&session, path, &data).await
    };
    if let Err(e) = stored {
        run.warn(&format!(
            "could not store the manifest copy on the destination: {e}"
        ));
    }
    Ok(())
}

/// Removes a push's temp files that no attempt will resume: leftovers of
/// earlier runs (late requests of an abandoned connection may even have
/// made some after they were listed) and this run's attempts that did not land.
async fn remove_remote_temps(run: &Run, pool: &Pool, job: &push::Push, listed: &[Vec<u8>]) {
    let root = &job.remote_root;
    let resumable: HashSet<Vec<u8>> = job
        .partials
        .lock()
        .unwrap()
        .values()
        .map(|p| join(root, &p.temp))
        .collect();
    let stale: Vec<Vec<u8>> = listed
        .iter()
        .map(|t| join(root, t))
        .chain(job.temps.lock().unwrap().drain())
        .filter(|t| !resumable.contains(t))
        .collect();
    // Again on a new session if the link drops meanwhile (removing twice is harmless).
    let cleaned = on_session(pool, |s| {
        let stale = &stale;
        async move {
            let removed = futures::future::join_all(stale.iter().map(|t| s.remove(t))).await;
            match removed
                .into_iter()
                .find_map(|r| r.err().filter(Error::is_connection))
            {
                Some(lost) => Err(lost),
                None => Ok(()),
            }
        }
    })
    .await;
    if let Err(e) = cleaned {
        run.warn(&format!(
            "could not remove {} temp file(s) at the destination ({e}); the next run will",
            stale.len()
        ));
    }
}

/// Makes the destination and robosync's state directory in it, takes the
/// destination's lease and this machine's lock on its canonical identity.
/// A lost connection is `EXIT_LOST`, for the caller to retry on a new session.
async fn prepare_destination(
    pool: &Arc<Pool>,
    s: &robosync_transport::Sftp,
    remote_root: &[u8],
    state_dir: &Path,
    dest_label: &str,
    creatable: usize,
) -> Result<std::fs::File, Failure> {
    let lost_or = |code: i32, what: &str, e: Error| {
        let code = if e.is_connection() { EXIT_LOST } else { code };
        fail(code, format!("{what}: {e}"))
    };
    // One flight: the destination, robosync's state directory in it
    // (where the manifest copy goes), and a check of what is there.
    // MKDIRs fail harmlessly when the directories exist.
    let state = join(remote_root, remote::STATE_DIR);
    let plain = Default::default();
    // robosync's state there lists every path, size and hash: 0700,
    // and an existing directory tightened (in the same flight).
    let private = private_attrs(0o700);
    // The lease's EXCL open and the REALPATH go in the same flight,
    // after the MKDIRs (one channel's requests are answered in order).
    let (_, _, _, there, opened, real) = futures::join!(
        async {
            // A file's own directory is never made (rsync: change_dir fails).
            match creatable {
                0 => Ok(()),
                _ => s.mkdir(remote_root, &plain).await,
            }
        },
        s.mkdir(&state, &private),
        s.setstat(&state, &private),
        s.lstat(remote_root),
        crate::lease::open_excl(s, remote_root),
        s.realpath(remote_root)
    );
    let mut real = real;
    if !there.as_ref().is_ok_and(|a| a.is_dir()) {
        // A file there: what rsync calls "destination must be a directory".
        let file = there.is_ok_and(|a| !a.is_symlink());
        // Missing parents, or not a directory: the careful way, with its errors.
        let parent = required_parent(remote_root, creatable);
        let missing = match &parent {
            Some(p) if !file => match s.stat(p).await {
                Ok(a) => !a.is_dir(),
                // A cut is retried on a new session (the lease knows its own).
                Err(e) if e.is_connection() => {
                    return Err(lost_or(EXIT_PARTIAL, "cannot check the destination", e))
                }
                Err(_) => true,
            },
            _ => false,
        };
        let made = match file || missing {
            true => Ok(()),
            false => push::mkdir_p(s, remote_root).await,
        };
        if file || missing || made.is_err() {
            if let Ok(h) = &opened {
                // An empty lease of ours must not stay behind.
                s.close_detached(h);
                let _ = s.remove(&join(remote_root, b".robosync/lock")).await;
            }
        }
        if file {
            return Err(fail(
                EXIT_SELECTION,
                format!(
                    "destination {} is not a directory: a directory or several sources need one (as rsync)",
                    String::from_utf8_lossy(remote_root)
                ),
            ));
        }
        if let (true, Some(p)) = (missing, &parent) {
            return Err(parent_missing(remote_root, p, creatable));
        }
        if let Err(e) = made {
            return Err(lost_or(EXIT_PARTIAL, "cannot create destination", e));
        }
        let _ = s.mkdir(&state, &private).await;
        real = s.realpath(remote_root).await;
    }
    // One run per destination: its lease, and this machine's lock on
    // its canonical identity (user, host, port, REALPATH).
    let taken = crate::lease::take_remote(pool, s, remote_root, Some(opened), dest_label).await;
    crate::lease::HELD.hold(taken?);
    let real = real.map_err(|e| lost_or(EXIT_PARTIAL, "cannot resolve destination", e))?;
    let identity = format!("{}:{}", pool.peer(), String::from_utf8_lossy(&real));
    crate::lease::hold_identity(state_dir, &identity, dest_label)
}

/// The run's result: its entry errors (exit 23), unless the pool gave up on
/// the connection, which ends the run as "connection lost" (exit 30) with
/// those errors shown first.
pub fn unless_lost(
    run: &Run,
    pool: &Pool,
    errors: Vec<EntryError>,
) -> Result<Vec<EntryError>, Failure> {
    match pool.gave_up() {
        Some(e) => {
            run.keep_errors(errors);
            Err(transport_failure(e))
        }
        None => Ok(errors),
    }
}

/// The plan, or the `--delete` guard that refuses it (exit 25). A dry run
/// gets the whole plan, deletions included, and the guard a real run would
/// stop at.
pub fn plan_guarded(
    source: &Tree,
    dest: &Tree,
    manifest: &Manifest,
    label: &str,
    opts: &PlanOptions,
    dry_run: bool,
) -> Result<(robosync_planner::Plan, Option<String>), Failure> {
    match plan(source, dest, Some(manifest), label, opts) {
        Ok(p) => Ok((p, None)),
        Err(guard) if dry_run => {
            let open = PlanOptions {
                guards: false,
                ..opts.clone()
            };
            let p = plan(source, dest, Some(manifest), label, &open)
                .map_err(|e| fail(EXIT_GUARD, e.to_string()))?;
            Ok((p, Some(guard.to_string())))
        }
        Err(guard) => Err(fail(EXIT_GUARD, guard.to_string())),
    }
}

/// A dry run's output: every action a real run would take, then the guard
/// that would stop it, if any (with the code the real run would exit with).
pub fn preview(
    run: &Run,
    plan: &robosync_planner::Plan,
    guard: Option<String>,
    errors: Vec<EntryError>,
) -> Result<Vec<EntryError>, Failure> {
    for a in &plan.actions {
        run.planned(&a.to_string());
    }
    match guard {
        Some(g) => Err(fail(
            EXIT_GUARD,
            format!("a real run would stop before changing anything: {g}"),
        )),
        None => Ok(errors),
    }
}

/// Opens the run's journal (creating the state directory), numbers the run
/// in `manifest` and records its start; the progress total comes from `plan`.
pub fn start_journal(
    run: &Run,
    paths: &robosync_manifest::StatePaths,
    manifest: &mut Manifest,
    plan: &robosync_planner::Plan,
) -> Result<(), Failure> {
    robosync_manifest::private_dir(&paths.dir).map_err(|e| {
        fail(
            EXIT_USAGE,
            format!("cannot create state dir {}: {e}", paths.dir.display()),
        )
    })?;
    let journal = Journal::open(&paths.journal).map_err(|e| fail(EXIT_USAGE, e.to_string()))?;
    run.set_journal(journal);
    manifest.run_id += 1;
    manifest.written_at_unix = now_unix();
    manifest.block_size = robosync_scanner::BLOCK_SIZE;
    run.journal(&JournalRecord::RunStarted {
        run_id: manifest.run_id,
        unix: manifest.written_at_unix,
    });
    let files = plan
        .actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Copy { .. } | Action::Delta { .. } | Action::Symlink { .. }
            )
        })
        .count();
    run.set_total(
        plan.bytes_to_send(robosync_scanner::BLOCK_SIZE),
        files as u64,
    );
    run.phase(Phase::Transferring);
    Ok(())
}

/// Whether a plan has enough work to repay opening the pool's other
/// channels and connections (see [`Pool::expand`]): a few files go at once
/// over the first session.
pub fn worth_more_sessions(plan: &robosync_planner::Plan) -> bool {
    let files = plan
        .actions
        .iter()
        .filter(|a| !matches!(a, Action::Mkdir { .. }))
        .count();
    enough_work(files, plan.bytes_to_send(robosync_scanner::BLOCK_SIZE))
}

fn enough_work(files: usize, bytes: u64) -> bool {
    files >= 16 || bytes >= 8 << 20
}

/// A guess, before anything is listed, at whether a push will have enough to
/// do for [`worth_more_sessions`]: the files the local manifest does not
/// record as already at the destination with this size and mtime. No
/// manifest (a first push) means everything.
fn likely_work(snap: &robosync_scanner::Snapshot, known: Option<&Manifest>) -> bool {
    let (mut files, mut bytes) = (0, 0);
    for e in &snap.entries {
        if !matches!(e.kind, robosync_scanner::EntryKind::File) {
            continue;
        }
        let same = known
            .and_then(|m| m.files.get(e.path.as_os_str().as_bytes()))
            .is_some_and(|r| r.size == e.size && r.mtime_ns == e.mtime_ns);
        if !same {
            files += 1;
            bytes += e.size;
        }
    }
    enough_work(files, bytes)
}

/// The end of every run: keep the stat cache, report the pool's notes
/// (waiting for its growth only when someone reads them), log out.
pub async fn close_run(
    run: &Run,
    pool: &Pool,
    cache: Option<&StatCache>,
    paths: &robosync_manifest::StatePaths,
    verbose: bool,
) {
    run.phase(Phase::Closing);
    // None: the scan left it as loaded, and rewriting it would only cost a sync.
    if let Some(Err(e)) = cache.map(|c| c.save(&paths.stat_cache)) {
        run.warn(&format!(
            "cannot save the stat cache {}: {e}",
            paths.stat_cache.display()
        ));
    }
    pool.settle(verbose).await;
    pool.close().await;
}

/// Ends the run's journal and records locally what the destination now
/// holds: the manifest saved, the journal compacted to what is still pending.
pub fn record_locally(
    run: &Run,
    manifest: &Manifest,
    paths: &robosync_manifest::StatePaths,
    errors: &mut Vec<EntryError>,
) {
    if let Some(e) = run.journal_error() {
        errors.push(format!("journal: {e}").into());
    }
    drop(run.take_journal());
    if let Err(e) = manifest.save(&paths.manifest) {
        errors.push(e.to_string().into());
    } else if let Err(e) = compact(&paths.manifest, &paths.journal) {
        errors.push(e.to_string().into());
    }
}

/// The plan's trailing `--delete` removals, apart from everything else.
pub fn split_deletes(actions: Vec<Action>) -> (Vec<Action>, Vec<Action>) {
    let tail = actions
        .iter()
        .rposition(|a| !matches!(a, Action::Delete { .. }))
        .map(|i| i + 1)
        .unwrap_or(0);
    let mut content = actions;
    let deletes = content.split_off(tail);
    // A plan of only deletions: leading wrong-kind deletions can't exist without content.
    (content, deletes)
}

/// Holds this source and destination's state directory for the run: two
/// runs of one pair (an overlapping cron job, a manual run) would interleave
/// one journal and race on one manifest. `flock`, so the lock ends with the
/// process however it ends; there is never a stale lock to clear.
pub fn hold_state(paths: &robosync_manifest::StatePaths) -> Result<std::fs::File, Failure> {
    let cannot = |what: &str, p: &Path, e: std::io::Error| {
        fail(EXIT_USAGE, format!("cannot {what} {}: {e}", p.display()))
    };
    robosync_manifest::private_dir(&paths.dir)
        .map_err(|e| cannot("create state dir", &paths.dir, e))?;
    let path = paths.dir.join("lock");
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).truncate(false).write(true);
    let file =
        robosync_manifest::open_private(&mut opts, &path).map_err(|e| cannot("open", &path, e))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(file);
    }
    match std::io::Error::last_os_error() {
        e if e.kind() == std::io::ErrorKind::WouldBlock => Err(fail(
            EXIT_BUSY,
            format!(
                "another robosync run is syncing this source and destination (it holds {}); \
                 this run did nothing: try again when that one has finished",
                path.display()
            ),
        )),
        e => Err(cannot("lock", &path, e)),
    }
}

/// Whether the destination's manifest copy, as read at the start of the run,
/// already holds exactly `manifest`'s records (a no-change rerun): storing it
/// again would cost three round trips and change nothing but its date.
fn copy_is_current(manifest: &Manifest, copy: Option<&[u8]>) -> bool {
    copy.and_then(|b| Manifest::decode(b).ok())
        .is_some_and(|old| old.block_size == manifest.block_size && old.files == manifest.files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use robosync_planner::Node;

    fn manifest(size: u64, run_id: u64) -> Manifest {
        let mut m = Manifest {
            block_size: 256 << 10,
            written_at_unix: 1_700_000_000 + run_id as i64,
            run_id,
            ..Default::default()
        };
        let record = Record {
            size,
            mtime_ns: 1,
            mode: 0o644,
            whole: [7; 32],
            blocks: vec![[7; 32]],
            remote_size: size,
            remote_mtime: 1,
        };
        m.files.insert(b"a/b".to_vec(), record);
        m
    }

    fn node(kind: Kind, size: u64, mtime: i64, mode: u32, whole: Option<[u8; 32]>) -> Node {
        Node {
            kind,
            size,
            mtime,
            mode,
            whole,
            blocks: whole.into_iter().collect(),
        }
    }

    fn tree(nodes: &[(&str, Node)]) -> Tree {
        Tree::from_unsorted(
            nodes
                .iter()
                .map(|(p, n)| (PathBuf::from(p), n.clone()))
                .collect(),
        )
    }

    #[test]
    fn directories_in_place_need_the_same_mode_and_mtime_as_the_receiver_sets_them() {
        let source = tree(&[
            ("same", node(Kind::Dir, 0, 10, 0o755, None)),
            ("newer", node(Kind::Dir, 0, 11, 0o755, None)),
            ("setgid", node(Kind::Dir, 0, 10, 0o2755, None)),
            ("missing", node(Kind::Dir, 0, 10, 0o755, None)),
        ]);
        let dest = tree(&[
            ("same", node(Kind::Dir, 0, 10, 0o755, None)),
            ("newer", node(Kind::Dir, 0, 10, 0o755, None)),
            ("setgid", node(Kind::Dir, 0, 10, 0o755, None)),
        ]);
        let push = dirs_in_place(&source, &dest, Direction::Push);
        assert_eq!(push, HashSet::from([PathBuf::from("same")]));
        // A pull never sets setgid, so a directory without it is right.
        let pull = dirs_in_place(&source, &dest, Direction::Pull);
        assert_eq!(
            pull,
            HashSet::from([PathBuf::from("same"), PathBuf::from("setgid")])
        );
    }

    #[test]
    fn actions_touch_their_parents_and_new_directories() {
        let touched = dirs_touched(&[
            Action::Mkdir {
                path: "a/new".into(),
                mode: 0o755,
            },
            Action::Delete {
                path: "b/gone".into(),
                dir: false,
            },
        ]);
        let want = ["a/new", "a", "b"].map(PathBuf::from);
        assert_eq!(touched, HashSet::from(want));
    }

    #[test]
    fn files_equal_by_the_quick_check_are_adopted_with_the_local_sides_hashes() {
        let (h1, h2) = ([1; 32], [2; 32]);
        let source = tree(&[
            ("same", node(Kind::File, 5, 10, 0o644, Some(h1))),
            ("other", node(Kind::File, 5, 11, 0o644, Some(h1))),
        ]);
        let dest = tree(&[
            ("same", node(Kind::File, 5, 10, 0o644, Some(h2))),
            ("other", node(Kind::File, 5, 10, 0o644, Some(h2))),
        ]);
        let none = HashMap::new();
        for (direction, whole) in [(Direction::Push, h1), (Direction::Pull, h2)] {
            let mut m = Manifest::default();
            adopt_unchanged(&mut m, &source, &dest, direction, &none);
            assert_eq!(m.files.len(), 1, "{direction:?}");
            let r = &m.files[&b"same".to_vec()];
            assert_eq!(r.whole, whole, "{direction:?}");
            assert_eq!(
                (r.size, r.mtime_ns, r.remote_size, r.remote_mtime),
                (5, 10_000_000_000, 5, 10)
            );
            // One block: known by its whole hash alone, as a landing records it.
            assert!(r.blocks.is_empty());
        }
    }

    #[test]
    fn a_copy_with_the_same_records_is_current_whatever_its_date() {
        let copy = manifest(10, 1).encode();
        assert!(copy_is_current(&manifest(10, 2), Some(&copy)));
        assert!(!copy_is_current(&manifest(11, 2), Some(&copy)));
        assert!(!copy_is_current(&Manifest::default(), Some(&copy)));
        assert!(!copy_is_current(&manifest(10, 2), None));
        assert!(!copy_is_current(&manifest(10, 2), Some(b"not a manifest")));
    }
}
