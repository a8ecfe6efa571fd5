//! The WASI preview 1 functions a `wasm32-wasip1` script may import: an allow-list, written here
//! so each is bounded and charged like the `turnstile` imports. A script has no files, no
//! environment, no arguments, no network and no processes: stdin is empty, stdout and stderr go
//! to the session log (within the log budget; what is over it is dropped), there are no
//! preopened directories, and deploy refuses any WASI import not listed here, naming it.
//!
//! Sleeping (`poll_oneoff` on a clock) is allowed only within the action's wall-clock deadline: a
//! sleep that would end past it fails the action at once as `deadline` (waits belong between
//! actions: a `wait` step with a timeout). A sleep within it never holds a worker: a synchronous
//! run that wants to sleep is started again as a task, and a task's sleep parks it.

use super::{ActionCtx, Charge, ImportTable, Linking, Mode, burn_bytes, host_call, in_memory, split};
use crate::failure::FailureKind;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, Linker, ValType};

/// The import module of WASI preview 1.
pub(crate) const MODULE: &str = "wasi_snapshot_preview1";

/// The WASI functions a script may import, and their signatures.
pub(crate) const IMPORTS: ImportTable = {
    use ValType::{I32, I64};
    &[
        ("args_get", &[I32, I32], &[I32]),
        ("args_sizes_get", &[I32, I32], &[I32]),
        ("environ_get", &[I32, I32], &[I32]),
        ("environ_sizes_get", &[I32, I32], &[I32]),
        ("clock_res_get", &[I32, I32], &[I32]),
        ("clock_time_get", &[I32, I64, I32], &[I32]),
        ("fd_close", &[I32], &[I32]),
        ("fd_fdstat_get", &[I32, I32], &[I32]),
        ("fd_fdstat_set_flags", &[I32, I32], &[I32]),
        ("fd_filestat_get", &[I32, I32], &[I32]),
        ("fd_prestat_get", &[I32, I32], &[I32]),
        ("fd_prestat_dir_name", &[I32, I32, I32], &[I32]),
        ("fd_read", &[I32, I32, I32, I32], &[I32]),
        ("fd_seek", &[I32, I64, I32, I32], &[I32]),
        ("fd_sync", &[I32], &[I32]),
        ("fd_tell", &[I32, I32], &[I32]),
        ("fd_write", &[I32, I32, I32, I32], &[I32]),
        ("poll_oneoff", &[I32, I32, I32, I32], &[I32]),
        ("proc_exit", &[I32], &[]),
        ("random_get", &[I32, I32], &[I32]),
        ("sched_yield", &[], &[I32]),
    ]
};

pub(crate) const ARGS_AND_ENV: Charge = Charge {
    import: "wasi_snapshot_preview1::args_get, args_sizes_get, environ_get, environ_sizes_get, sched_yield",
    base: 200,
    per_kib: 0,
};
pub(crate) const CLOCK: Charge =
    Charge { import: "wasi_snapshot_preview1::clock_time_get, clock_res_get", base: 440, per_kib: 0 };
pub(crate) const FD: Charge = Charge {
    import: "wasi_snapshot_preview1::fd_close, fd_fdstat_get, fd_fdstat_set_flags, fd_filestat_get, fd_prestat_get, fd_prestat_dir_name, fd_read, fd_seek, fd_sync, fd_tell",
    base: 250,
    per_kib: 0,
};
pub(crate) const FD_WRITE: Charge = Charge { import: "wasi_snapshot_preview1::fd_write", base: 350, per_kib: 1000 };
pub(crate) const POLL_ONEOFF: Charge =
    Charge { import: "wasi_snapshot_preview1::poll_oneoff", base: 1200, per_kib: 5800 };
pub(crate) const PROC_EXIT: Charge = Charge { import: "wasi_snapshot_preview1::proc_exit", base: 200, per_kib: 0 };
pub(crate) const RANDOM_GET: Charge = Charge { import: "wasi_snapshot_preview1::random_get", base: 350, per_kib: 1050 };

/// WASI error numbers used here.
const SUCCESS: i32 = 0;
const BADF: u16 = 8;
const INVAL: i32 = 28;
const SPIPE: i32 = 70;

/// The file type of stdin, stdout and stderr: a character device.
const CHARACTER_DEVICE: u8 = 2;
/// Subscriptions one `poll_oneoff` may pass (each is 48 bytes).
const MAX_SUBSCRIPTIONS: usize = 64;

/// Whether `fd` is stdin (0), stdout (1) or stderr (2): the only descriptors a script has.
fn stdio(fd: i32) -> bool {
    (0..=2).contains(&fd)
}

/// Writes `bytes` into guest memory at `ptr`, checked.
fn put(caller: &mut Caller<'_, ActionCtx>, ptr: i32, bytes: &[u8], what: &str) -> wasmtime::Result<()> {
    let (mem, ctx) = split(caller)?;
    let start = usize::try_from(ptr).unwrap_or(usize::MAX);
    let range = in_memory(ctx, mem.len(), start, bytes.len(), what)?;
    mem[range].copy_from_slice(bytes);
    Ok(())
}

/// Reads `N` bytes of guest memory at `ptr`, checked.
fn get<const N: usize>(caller: &mut Caller<'_, ActionCtx>, ptr: usize, what: &str) -> wasmtime::Result<[u8; N]> {
    let (mem, ctx) = split(caller)?;
    let range = in_memory(ctx, mem.len(), ptr, N, what)?;
    let mut out = [0u8; N];
    out.copy_from_slice(&mem[range]);
    Ok(out)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn as_usize(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Nanoseconds on clock `id` (realtime, monotonic, process or thread CPU time), or `None` for
/// an unknown clock.
fn clock_now(ctx: &ActionCtx, id: u32) -> Option<u64> {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    match id {
        0 => Some(nanos(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())),
        1 => Some(nanos(BASE.get_or_init(Instant::now).elapsed())),
        2 | 3 => Some(nanos(ctx.started.elapsed())),
        _ => None,
    }
}

/// Registers the allowed WASI functions.
pub(crate) fn add_to_linker(linker: &mut Linker<ActionCtx>, linking: Linking) -> wasmtime::Result<()> {
    // No arguments and no environment: every count and size is zero, nothing to copy.
    for name in ["args_sizes_get", "environ_sizes_get"] {
        linker.func_wrap(MODULE, name, |mut caller: Caller<'_, ActionCtx>, count: i32, size: i32| {
            host_call(&mut caller, &ARGS_AND_ENV, |caller| {
                put(caller, count, &0u32.to_le_bytes(), "args/environ count")?;
                put(caller, size, &0u32.to_le_bytes(), "args/environ size")?;
                Ok(SUCCESS)
            })
        })?;
    }
    for name in ["args_get", "environ_get"] {
        linker.func_wrap(MODULE, name, |mut caller: Caller<'_, ActionCtx>, _list: i32, _buf: i32| {
            host_call(&mut caller, &ARGS_AND_ENV, |_| Ok(SUCCESS))
        })?;
    }
    linker.func_wrap(MODULE, "sched_yield", |mut caller: Caller<'_, ActionCtx>| {
        host_call(&mut caller, &ARGS_AND_ENV, |_| Ok(SUCCESS))
    })?;
    linker.func_wrap(MODULE, "clock_res_get", |mut caller: Caller<'_, ActionCtx>, id: i32, out: i32| {
        host_call(&mut caller, &CLOCK, |caller| {
            if !(0..=3).contains(&id) {
                return Ok(INVAL);
            }
            put(caller, out, &1_000u64.to_le_bytes(), "clock_res_get")?;
            Ok(SUCCESS)
        })
    })?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut caller: Caller<'_, ActionCtx>, id: i32, _precision: i64, out: i32| {
            host_call(&mut caller, &CLOCK, |caller| {
                let Some(now) = u32::try_from(id).ok().and_then(|id| clock_now(caller.data(), id)) else {
                    return Ok(INVAL);
                };
                put(caller, out, &now.to_le_bytes(), "clock_time_get")?;
                Ok(SUCCESS)
            })
        },
    )?;
    add_descriptors(linker)?;
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut caller: Caller<'_, ActionCtx>, fd: i32, iovs: i32, iovs_len: i32, written: i32| {
            host_call(&mut caller, &FD_WRITE, |caller| {
                if fd != 1 && fd != 2 {
                    return Ok(i32::from(BADF));
                }
                let mut total = 0usize;
                for n in 0..usize::try_from(iovs_len).unwrap_or(0).min(1024) {
                    let at = usize::try_from(iovs).unwrap_or(usize::MAX).saturating_add(n * 8);
                    let iov: [u8; 8] = get(caller, at, "fd_write iovec")?;
                    let (ptr, len) = (as_usize(u32_at(&iov, 0)), as_usize(u32_at(&iov, 4)));
                    burn_bytes(caller, &FD_WRITE, len)?;
                    let (mem, ctx) = split(caller)?;
                    let range = in_memory(ctx, mem.len(), ptr, len, "fd_write")?;
                    ctx.push_stdio(&mem[range]);
                    total = total.saturating_add(len);
                }
                put(caller, written, &u32::try_from(total).unwrap_or(u32::MAX).to_le_bytes(), "fd_write")?;
                Ok(SUCCESS)
            })
        },
    )?;
    linker.func_wrap(MODULE, "random_get", |mut caller: Caller<'_, ActionCtx>, buf: i32, len: i32| {
        host_call(&mut caller, &RANDOM_GET, |caller| {
            let (mem, ctx) = split(caller)?;
            let start = usize::try_from(buf).unwrap_or(usize::MAX);
            let range = in_memory(ctx, mem.len(), start, usize::try_from(len).unwrap_or(usize::MAX), "random_get")?;
            // Generated in place, in the guest's own memory: the host allocates nothing for it.
            burn_bytes(caller, &RANDOM_GET, range.len())?;
            let (mem, ctx) = split(caller)?;
            ctx.fill_random(&mut mem[range]);
            Ok(SUCCESS)
        })
    })?;
    linker.func_wrap(MODULE, "proc_exit", |mut caller: Caller<'_, ActionCtx>, code: i32| {
        host_call(&mut caller, &PROC_EXIT, |caller| -> wasmtime::Result<()> {
            let message = format!("the action called proc_exit({code}); actions end by returning");
            Err(caller.data_mut().violate(FailureKind::Trap, message))
        })
    })?;
    match linking {
        Linking::Sync => add_poll_sync(linker),
        Linking::Task => add_poll_task(linker),
    }
}

/// The descriptor functions: only stdin, stdout and stderr exist (no preopened directories).
fn add_descriptors(linker: &mut Linker<ActionCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "fd_close", |mut caller: Caller<'_, ActionCtx>, fd: i32| {
        host_call(&mut caller, &FD, |_| Ok(if stdio(fd) { SUCCESS } else { i32::from(BADF) }))
    })?;
    linker.func_wrap(MODULE, "fd_sync", |mut caller: Caller<'_, ActionCtx>, fd: i32| {
        host_call(&mut caller, &FD, |_| Ok(if stdio(fd) { SUCCESS } else { i32::from(BADF) }))
    })?;
    linker.func_wrap(MODULE, "fd_fdstat_set_flags", |mut caller: Caller<'_, ActionCtx>, fd: i32, _flags: i32| {
        host_call(&mut caller, &FD, |_| Ok(if stdio(fd) { SUCCESS } else { i32::from(BADF) }))
    })?;
    linker.func_wrap(MODULE, "fd_fdstat_get", |mut caller: Caller<'_, ActionCtx>, fd: i32, out: i32| {
        host_call(&mut caller, &FD, |caller| {
            if !stdio(fd) {
                return Ok(i32::from(BADF));
            }
            // filetype u8, flags u16 at 2, rights_base u64 at 8, rights_inheriting u64 at 16.
            let mut stat = [0u8; 24];
            stat[0] = CHARACTER_DEVICE;
            let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 };
            stat[8..16].copy_from_slice(&rights.to_le_bytes());
            put(caller, out, &stat, "fd_fdstat_get")?;
            Ok(SUCCESS)
        })
    })?;
    linker.func_wrap(MODULE, "fd_filestat_get", |mut caller: Caller<'_, ActionCtx>, fd: i32, out: i32| {
        host_call(&mut caller, &FD, |caller| {
            if !stdio(fd) {
                return Ok(i32::from(BADF));
            }
            // dev u64, ino u64, filetype u8 at 16, then link count, size and times: all zero.
            let mut stat = [0u8; 64];
            stat[16] = CHARACTER_DEVICE;
            put(caller, out, &stat, "fd_filestat_get")?;
            Ok(SUCCESS)
        })
    })?;
    linker.func_wrap(MODULE, "fd_prestat_get", |mut caller: Caller<'_, ActionCtx>, _fd: i32, _out: i32| {
        host_call(&mut caller, &FD, |_| Ok(i32::from(BADF)))
    })?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |mut caller: Caller<'_, ActionCtx>, _fd: i32, _path: i32, _len: i32| {
            host_call(&mut caller, &FD, |_| Ok(i32::from(BADF)))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_read",
        |mut caller: Caller<'_, ActionCtx>, fd: i32, _iovs: i32, _iovs_len: i32, read: i32| {
            host_call(&mut caller, &FD, |caller| {
                if fd != 0 {
                    return Ok(i32::from(BADF));
                }
                // Stdin is empty: end of file at once.
                put(caller, read, &0u32.to_le_bytes(), "fd_read")?;
                Ok(SUCCESS)
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_seek",
        |mut caller: Caller<'_, ActionCtx>, fd: i32, _offset: i64, _whence: i32, _out: i32| {
            host_call(&mut caller, &FD, |_| Ok(if stdio(fd) { SPIPE } else { i32::from(BADF) }))
        },
    )?;
    linker.func_wrap(MODULE, "fd_tell", |mut caller: Caller<'_, ActionCtx>, fd: i32, _out: i32| {
        host_call(&mut caller, &FD, |_| Ok(if stdio(fd) { SPIPE } else { i32::from(BADF) }))
    })?;
    Ok(())
}

/// One event `poll_oneoff` reports: the subscription's userdata, an error and the event type.
struct Ready {
    userdata: u64,
    error: u16,
    kind: u8,
}

/// What a `poll_oneoff` call asks for: events ready now, or a sleep until the first clock.
enum Plan {
    Now(Vec<Ready>),
    Sleep { after: Duration, clocks: Vec<(Duration, u64)> },
}

/// Reads `poll_oneoff`'s subscriptions (charged): descriptor subscriptions are answered at once
/// (stdin is at its end, stdout and stderr always take more); otherwise the first clock decides.
/// `Err(errno)` for a malformed request.
fn plan(caller: &mut Caller<'_, ActionCtx>, subs: i32, count: i32) -> wasmtime::Result<Result<Plan, i32>> {
    let count = match usize::try_from(count) {
        Ok(n) if (1..=MAX_SUBSCRIPTIONS).contains(&n) => n,
        _ => return Ok(Err(INVAL)),
    };
    burn_bytes(caller, &POLL_ONEOFF, count * 48)?;
    let base = usize::try_from(subs).unwrap_or(usize::MAX);
    let mut ready = Vec::new();
    let mut clocks = Vec::new();
    for n in 0..count {
        let sub: [u8; 48] = get(caller, base.saturating_add(n * 48), "poll_oneoff subscription")?;
        let userdata = u64_at(&sub, 0);
        match sub[8] {
            0 => {
                let (id, timeout, absolute) = (u32_at(&sub, 16), u64_at(&sub, 24), sub[40] & 1 == 1);
                let Some(now) = clock_now(caller.data(), id) else { return Ok(Err(INVAL)) };
                let after = if absolute { timeout.saturating_sub(now) } else { timeout };
                clocks.push((Duration::from_nanos(after), userdata));
            }
            kind @ (1 | 2) => {
                let fd = u32_at(&sub, 16);
                let ok = (kind == 1 && fd == 0) || (kind == 2 && (fd == 1 || fd == 2));
                ready.push(Ready { userdata, error: if ok { 0 } else { BADF }, kind });
            }
            _ => return Ok(Err(INVAL)),
        }
    }
    if !ready.is_empty() {
        return Ok(Ok(Plan::Now(ready)));
    }
    match clocks.iter().map(|(after, _)| *after).min() {
        Some(after) => Ok(Ok(Plan::Sleep { after, clocks })),
        None => Ok(Err(INVAL)),
    }
}

/// Refuses a sleep that would end past the action's deadline.
fn check_sleep(ctx: &mut ActionCtx, sleep: Duration) -> wasmtime::Result<()> {
    let left = ctx.limits.wall_time.saturating_sub(ctx.time_used());
    if sleep > left {
        let message = format!(
            "poll_oneoff asked to sleep {sleep:?}, past its wall-clock limit of {:?} ({left:?} were left); \
             an action may not wait that long: end it with a `wait` step with a timeout instead",
            ctx.limits.wall_time
        );
        return Err(ctx.violate(FailureKind::Deadline, message));
    }
    Ok(())
}

/// The clocks that are due after sleeping `slept`.
fn due_clocks(clocks: &[(Duration, u64)], slept: Duration) -> Vec<Ready> {
    clocks
        .iter()
        .filter(|(after, _)| *after <= slept)
        .map(|&(_, userdata)| Ready { userdata, error: 0, kind: 0 })
        .collect()
}

/// Writes `poll_oneoff`'s events and their count.
fn respond(caller: &mut Caller<'_, ActionCtx>, events: i32, nevents: i32, ready: &[Ready]) -> wasmtime::Result<i32> {
    let out = usize::try_from(events).unwrap_or(usize::MAX);
    for (n, event) in ready.iter().enumerate() {
        // userdata u64, error u16 at 8, type u8 at 10, fd_readwrite (nbytes u64, flags u16) at 16.
        let mut bytes = [0u8; 32];
        bytes[0..8].copy_from_slice(&event.userdata.to_le_bytes());
        bytes[8..10].copy_from_slice(&event.error.to_le_bytes());
        bytes[10] = event.kind;
        if event.kind == 1 {
            bytes[24] = 1; // stdin: hung up (at its end)
        }
        let at = i32::try_from(out.saturating_add(n * 32)).unwrap_or(-1);
        put(caller, at, &bytes, "poll_oneoff event")?;
    }
    put(caller, nevents, &u32::try_from(ready.len()).unwrap_or(0).to_le_bytes(), "poll_oneoff")?;
    Ok(SUCCESS)
}

/// `poll_oneoff` of a synchronous run: it answers what is ready now; a sleep means the action
/// must run as a task (it is started again as one, from the beginning).
fn add_poll_sync(linker: &mut Linker<ActionCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "poll_oneoff",
        |mut caller: Caller<'_, ActionCtx>, subs: i32, events: i32, count: i32, nevents: i32| {
            host_call(&mut caller, &POLL_ONEOFF, |caller| match plan(caller, subs, count)? {
                Err(errno) => Ok(errno),
                Ok(Plan::Now(ready)) => respond(caller, events, nevents, &ready),
                Ok(Plan::Sleep { after, clocks }) if after.is_zero() => {
                    respond(caller, events, nevents, &due_clocks(&clocks, after))
                }
                Ok(Plan::Sleep { after, .. }) => {
                    let ctx = caller.data_mut();
                    check_sleep(ctx, after)?;
                    ctx.wants_task = true;
                    Err(wasmtime::Error::msg("the action sleeps: it runs again as a task"))
                }
            })
        },
    )?;
    Ok(())
}

/// Pending until an instant, whoever polls it: how a task sleeps (its worker sees it pending,
/// parks it until then, and polls it again).
struct SleepUntil(Instant);

impl Future for SleepUntil {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.0 { Poll::Ready(()) } else { Poll::Pending }
    }
}

/// `poll_oneoff` of a task: a sleep within the deadline parks the task (it holds no worker),
/// charged as the time it sleeps.
fn add_poll_task(linker: &mut Linker<ActionCtx>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        MODULE,
        "poll_oneoff",
        |mut caller: Caller<'_, ActionCtx>, (subs, events, count, nevents): (i32, i32, i32, i32)| {
            Box::new(async move {
                let planned = host_call(&mut caller, &POLL_ONEOFF, |caller| {
                    let planned = plan(caller, subs, count)?;
                    if let Ok(Plan::Sleep { after, .. }) = &planned {
                        let ctx = caller.data_mut();
                        check_sleep(ctx, *after)?;
                        let until = Instant::now() + *after;
                        if let Mode::Task(clock) = &ctx.mode {
                            clock.sleep_until(until);
                        }
                        ctx.host_time += *after;
                    }
                    Ok(planned)
                })?;
                match planned {
                    Err(errno) => Ok(errno),
                    Ok(Plan::Now(ready)) => respond(&mut caller, events, nevents, &ready),
                    Ok(Plan::Sleep { after, clocks }) => {
                        if !after.is_zero() {
                            SleepUntil(Instant::now() + after).await;
                        }
                        respond(&mut caller, events, nevents, &due_clocks(&clocks, after))
                    }
                }
            })
        },
    )?;
    Ok(())
}
