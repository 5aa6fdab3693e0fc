//! Medians, the markdown table, the CSV of every sample and the SVG chart
//! (written by hand: no plotting crate).

use std::fmt::Write as _;
use std::time::Duration;

use crate::mem::MemResult;
use crate::{Case, Config, LATENCY_QOS, Sample, Variant};

/// Target: this crate / raw paho (tuned) throughput.
pub const THROUGHPUT_TARGET: f64 = 0.95;
/// Target: this crate's p50 latency / raw paho's.
pub const LATENCY_TARGET: f64 = 1.05;
/// Target: this crate with default options / raw paho with default options.
pub const DEFAULT_VS_DEFAULT_TARGET: f64 = 1.0;
/// Target: this crate with default options / raw paho tuned.
pub const DEFAULT_VS_TUNED_TARGET: f64 = 0.95;
/// Target: CPU per message, this crate tuned / raw paho tuned (at most).
pub const CPU_TARGET: f64 = 1.0;

pub struct ThroughputRun {
    pub round: usize,
    pub variant: Variant,
    pub case: Case,
    pub sample: Sample,
}

pub struct LatencyRun {
    pub round: usize,
    pub variant: Variant,
    pub qos: u8,
    pub p50: Duration,
    pub p99: Duration,
}

pub struct SweepPoint {
    pub window: usize,
    pub case: Case,
    pub rate: f64,
}

#[derive(Default)]
pub struct Results {
    pub cases: Vec<Case>,
    /// Load average at the start and at the end.
    pub load: (String, String),
    pub window: usize,
    pub window_note: String,
    pub sweep: Vec<SweepPoint>,
    pub throughput: Vec<ThroughputRun>,
    pub latency: Vec<LatencyRun>,
    pub memory: Vec<MemResult>,
    pub failures: Vec<String>,
}

/// Facts about the machine and the software, for the report.
pub struct Environment {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub rustc: String,
    pub paho_mqtt: String,
    pub paho_c: String,
    pub mosquitto: String,
}

pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Results {
    fn samples(&self, variant: Variant, case: Case) -> impl Iterator<Item = &Sample> {
        self.throughput
            .iter()
            .filter(move |r| r.variant == variant && r.case == case)
            .map(|r| &r.sample)
    }

    /// Median msg/s over the rounds.
    pub fn rate(&self, variant: Variant, case: Case) -> Option<f64> {
        median(self.samples(variant, case).map(Sample::rate).collect())
    }

    /// Median client CPU µs per message over the rounds.
    pub fn cpu(&self, variant: Variant, case: Case) -> Option<f64> {
        median(
            self.samples(variant, case)
                .map(Sample::cpu_per_message)
                .collect(),
        )
    }

    /// Medians of the CPU µs per message by thread: Paho receive, Paho send, rest.
    pub fn cpu_split(&self, variant: Variant, case: Case) -> Option<(f64, f64, f64)> {
        let parts: Vec<(f64, f64, f64)> =
            self.samples(variant, case).map(Sample::cpu_split).collect();
        Some((
            median(parts.iter().map(|p| p.0).collect())?,
            median(parts.iter().map(|p| p.1).collect())?,
            median(parts.iter().map(|p| p.2).collect())?,
        ))
    }

    fn incomplete(&self, variant: Variant, case: Case) -> bool {
        self.samples(variant, case).any(|s| s.received < s.expected)
    }

    fn refused(&self, variant: Variant, case: Case) -> Option<f64> {
        median(
            self.samples(variant, case)
                .map(|s| s.refused as f64)
                .collect(),
        )
    }

    /// Median over the rounds of (p50, p99), in µs.
    pub fn latency(&self, variant: Variant, qos: u8) -> Option<(f64, f64)> {
        let runs: Vec<&LatencyRun> = self
            .latency
            .iter()
            .filter(|r| r.variant == variant && r.qos == qos)
            .collect();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        Some((
            median(runs.iter().map(|r| us(r.p50)).collect())?,
            median(runs.iter().map(|r| us(r.p99)).collect())?,
        ))
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// "✅ 0.98" when `r` meets the target, "❌ 0.80" when not.
fn verdict(r: Option<f64>, target: f64, at_least: bool) -> String {
    match r {
        None => "–".to_owned(),
        Some(r) => {
            let met = if at_least { r >= target } else { r <= target };
            format!("{} {r:.2}", if met { "✅" } else { "❌" })
        }
    }
}

fn met(r: Option<f64>, target: f64, at_least: bool) -> Option<bool> {
    r.map(|r| if at_least { r >= target } else { r <= target })
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn payload_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

fn kib(kb: u64) -> String {
    if kb >= 10 * 1024 {
        format!("{:.1} MiB", kb as f64 / 1024.0)
    } else {
        format!("{kb} KiB")
    }
}

/// The markdown report: settings, the three tables, the targets.
pub fn markdown(cfg: &Config, env: &Environment, res: &Results) -> String {
    let mut md = String::new();
    let has = |v: Variant| cfg.variants.contains(&v);
    let _ = writeln!(md, "Command: `{}`\n", cfg.command);
    let _ = writeln!(
        md,
        "Machine: {} CPUs ({}), {} RAM, Linux {}. Software: {}, paho-mqtt {} on Paho C {}, {}.\n",
        env.cpus,
        env.cpu_model,
        env.memory,
        env.kernel,
        env.rustc,
        env.paho_mqtt,
        env.paho_c,
        env.mosquitto
    );
    let _ = writeln!(
        md,
        "Broker: a private Mosquitto on 127.0.0.1 with `{}`. \
         Window: {} publishes in flight ({}). Throughput: {} messages per run, \
         medians of {} rounds, clients interleaved in every round; {}.\n",
        crate::broker::settings(cfg.broker_max_inflight).join("`, `"),
        res.window,
        res.window_note,
        thousands(cfg.messages as f64),
        cfg.rounds,
        if cfg.separate {
            "every throughput run in a child process of its own (its publisher and \
             subscriber; the CPU counted is that process's)"
        } else {
            "every client in this one process"
        }
    );
    let _ = writeln!(
        md,
        "Protocol: MQTT {proto} for every client. Clients: *aiomqtt tuned* = \
         `Client::builder(host).port(p).identifier(id).protocol(..)\
         .max_inflight_messages({w})`; *paho tuned* = `AsyncClient` with `persistence(None)`, \
         MQTT {proto}, `max_buffered_messages(i32::MAX)` (what this crate sets) and \
         `max_inflight({w})`; *aiomqtt default* = the same builder without \
         `max_inflight_messages` ({default_window}); *paho default* = `AsyncClient` with only \
         the URI, client id, MQTT {proto} and no persistence (max_inflight 65535, \
         max_buffered_messages 100). Every publisher keeps {w} publishes pending; every \
         subscriber subscribes with the publish QoS (raw paho through `get_stream(None)`).\n",
        w = res.window,
        proto = if cfg.v5 { "5" } else { "3.1.1" },
        default_window = if cfg.v5 {
            "window: the broker's Receive Maximum, at most 2,000; none announced here, so 2,000"
        } else {
            "window 100, of which at most 20 QoS 2 publishes"
        },
    );
    let _ = writeln!(
        md,
        "Load average (1/5/15 min) at the start: {}; at the end: {}.{}\n",
        res.load.0,
        res.load.1,
        spread(res).map_or(String::new(), |(mid, max)| format!(
            " Run-to-run spread of throughput, (max − min) / median over the rounds of one \
             cell: median {:.0} %, largest {:.0} %.",
            mid * 100.0,
            max * 100.0
        ))
    );

    if !res.throughput.is_empty() {
        md.push_str("### Throughput (msg/s, median)\n\n");
        md.push_str(
            "Ratios: the median of the per-round ratios (the rounds pair the clients, so that a \
             round the machine slows counts against both), checked against the target; in \
             brackets the ratio of the medians.\n\n",
        );
        md.push_str(
            "| QoS | payload | aiomqtt tuned | paho tuned | tuned ratio (≥ 0.95) \
             | aiomqtt default | paho default | default ratio (≥ 1.00) \
             | aiomqtt default / paho tuned (≥ 0.95) |\n",
        );
        md.push_str("|---|---|--:|--:|:-:|--:|--:|:-:|:-:|\n");
        let mut lossy = false;
        for &case in &res.cases {
            let cell = |v: Variant| match res.rate(v, case) {
                None => "–".to_owned(),
                Some(r) if res.incomplete(v, case) => format!("{} †", thousands(r)),
                Some(r) => thousands(r),
            };
            lossy |= Variant::EVERY.iter().any(|&v| res.incomplete(v, case));
            let r = |a: Variant, b: Variant, target: f64| {
                both_ratios(
                    median(paired(res, a, b, case, Sample::rate)),
                    ratio(res.rate(a, case), res.rate(b, case)),
                    target,
                    true,
                )
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                case.qos,
                payload_label(case.payload),
                cell(Variant::OursTuned),
                cell(Variant::RawTuned),
                r(Variant::OursTuned, Variant::RawTuned, THROUGHPUT_TARGET),
                cell(Variant::OursDefault),
                cell(Variant::RawDefault),
                r(
                    Variant::OursDefault,
                    Variant::RawDefault,
                    DEFAULT_VS_DEFAULT_TARGET
                ),
                r(
                    Variant::OursDefault,
                    Variant::RawTuned,
                    DEFAULT_VS_TUNED_TARGET
                ),
            );
        }
        md.push('\n');
        if lossy {
            md.push_str("† at least one run did not receive every message (see the CSV).\n\n");
        }
        if has(Variant::RawDefault) {
            let refused: Vec<String> = res
                .cases
                .iter()
                .filter_map(|&c| {
                    let r = res.refused(Variant::RawDefault, c)?;
                    (r > 0.0).then(|| {
                        format!(
                            "QoS {} {}: {}",
                            c.qos,
                            payload_label(c.payload),
                            thousands(r)
                        )
                    })
                })
                .collect();
            if !refused.is_empty() {
                let _ = writeln!(
                    md,
                    "paho default refused `try_publish` with `MQTTASYNC_MAX_BUFFERED_MESSAGES` \
                     (its default `max_buffered_messages` is 100); the bench then waited for one \
                     pending publish and retried. Median refusals per run: {}.\n",
                    refused.join("; ")
                );
            }
        }
    }

    if !res.throughput.is_empty() {
        md.push_str(
            "### Client CPU per message (µs, median; all threads of the process running the \
             throughput run, publisher and subscriber together; lower is better)\n\n\
             Each cell: total (Paho receive thread / Paho send thread / tokio workers and the rest). \
             The Paho receive thread reads every packet and runs the message callback under \
             Paho's global mutex, so its share bounds the throughput.\n\n",
        );
        md.push_str(
            "| QoS | payload | aiomqtt tuned | paho tuned | tuned ratio (≤ 1.00) \
             | aiomqtt default | paho default | default ratio (≤ 1.00) |\n",
        );
        md.push_str("|---|---|--:|--:|--:|--:|--:|--:|\n");
        for &case in &res.cases {
            let cell = |v: Variant| match (res.cpu(v, case), res.cpu_split(v, case)) {
                (Some(total), Some((rcv, snd, rest))) => {
                    format!("{total:.1} ({rcv:.1} / {snd:.1} / {rest:.1})")
                }
                _ => "–".to_owned(),
            };
            let r = |a: Variant, b: Variant| {
                both_ratios(
                    median(paired(res, a, b, case, Sample::cpu_per_message)),
                    ratio(res.cpu(a, case), res.cpu(b, case)),
                    CPU_TARGET,
                    false,
                )
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                case.qos,
                payload_label(case.payload),
                cell(Variant::OursTuned),
                cell(Variant::RawTuned),
                r(Variant::OursTuned, Variant::RawTuned),
                cell(Variant::OursDefault),
                cell(Variant::RawDefault),
                r(Variant::OursDefault, Variant::RawDefault),
            );
        }
        md.push('\n');
    }

    if cfg.variants.contains(&Variant::RawControl) && !res.throughput.is_empty() {
        md.push_str(&control(res));
    }

    if !res.latency.is_empty() {
        let _ = writeln!(
            md,
            "### Round-trip latency (µs; publish, receive the own message; {} B; median over rounds of each round's percentile)\n",
            crate::LATENCY_PAYLOAD
        );
        md.push_str(
            "| QoS | aiomqtt tuned p50 / p99 | paho tuned p50 / p99 | p50 ratio (≤ 1.05) \
             | aiomqtt default p50 / p99 | paho default p50 / p99 | p50 ratio (≤ 1.05) |\n",
        );
        md.push_str("|---|--:|--:|:-:|--:|--:|:-:|\n");
        for q in LATENCY_QOS {
            let cell = |v: Variant| match res.latency(v, q) {
                Some((p50, p99)) => format!("{p50:.0} / {p99:.0}"),
                None => "–".to_owned(),
            };
            let p50 = |v: Variant| res.latency(v, q).map(|l| l.0);
            let _ = writeln!(
                md,
                "| {q} | {} | {} | {} | {} | {} | {} |",
                cell(Variant::OursTuned),
                cell(Variant::RawTuned),
                both_ratios(
                    median(paired_p50(res, Variant::OursTuned, Variant::RawTuned, q)),
                    ratio(p50(Variant::OursTuned), p50(Variant::RawTuned)),
                    LATENCY_TARGET,
                    false
                ),
                cell(Variant::OursDefault),
                cell(Variant::RawDefault),
                both_ratios(
                    median(paired_p50(
                        res,
                        Variant::OursDefault,
                        Variant::RawDefault,
                        q
                    )),
                    ratio(p50(Variant::OursDefault), p50(Variant::RawDefault)),
                    LATENCY_TARGET,
                    false
                ),
            );
        }
        md.push('\n');
    }

    if !res.memory.is_empty() {
        let _ = writeln!(
            md,
            "### Peak memory of a subscriber that never reads ({} QoS 0 messages of {} B, one child process per row)\n",
            thousands(cfg.mem_messages as f64),
            crate::mem::PAYLOAD
        );
        md.push_str(
            "| subscriber | queued | discarded | RSS before | peak RSS (VmHWM) | growth | per queued message |\n",
        );
        md.push_str("|---|--:|--:|--:|--:|--:|--:|\n");
        for m in &res.memory {
            let growth = m.peak_kb.saturating_sub(m.rss_before_kb);
            // Only meaningful when the queue dominates the growth.
            let per = if m.queued >= 10_000 {
                format!("{:.0} B", growth as f64 * 1024.0 / m.queued as f64)
            } else {
                "–".to_owned()
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                m.subscriber.label(),
                thousands(m.queued as f64),
                m.discarded.map_or("–".to_owned(), |d| thousands(d as f64)),
                kib(m.rss_before_kb),
                kib(m.peak_kb),
                kib(growth),
                per
            );
        }
        md.push('\n');
    }

    md.push_str("### Targets\n\n");
    for line in targets(res) {
        let _ = writeln!(md, "- {line}");
    }
    if !res.failures.is_empty() {
        md.push_str("\n### Failed runs\n\n");
        for f in &res.failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    md
}

/// Per-round ratios of the `value` of the runs `a` selects to that of the run `b` selects
/// in the same round (rounds without both are left out): the rounds pair the clients, so
/// that a round slowed by the machine counts against both.
fn by_round<R>(
    runs: &[R],
    round: fn(&R) -> usize,
    a: impl Fn(&R) -> bool,
    b: impl Fn(&R) -> bool,
    value: impl Fn(&R) -> f64,
) -> Vec<f64> {
    let of_b = |n: usize| runs.iter().find(|r| b(r) && round(r) == n).map(&value);
    runs.iter()
        .filter(|r| a(r))
        .filter_map(|r| Some(value(r) / of_b(round(r))?))
        .collect()
}

/// Per-round ratios of `a` to `b` in `case`, by `metric` of the two samples.
fn paired(
    res: &Results,
    a: Variant,
    b: Variant,
    case: Case,
    metric: fn(&Sample) -> f64,
) -> Vec<f64> {
    by_round(
        &res.throughput,
        |r| r.round,
        |r| r.variant == a && r.case == case,
        |r| r.variant == b && r.case == case,
        |r| metric(&r.sample),
    )
}

/// Per-round ratios of `a`'s latency p50 to `b`'s at `qos`.
fn paired_p50(res: &Results, a: Variant, b: Variant, qos: u8) -> Vec<f64> {
    by_round(
        &res.latency,
        |r| r.round,
        |r| r.variant == a && r.qos == qos,
        |r| r.variant == b && r.qos == qos,
        |r| r.p50.as_secs_f64(),
    )
}

/// "✅ 1.03 (0.88)": the verdict on the paired ratio, then the ratio of the medians.
fn both_ratios(
    paired: Option<f64>,
    of_medians: Option<f64>,
    target: f64,
    at_least: bool,
) -> String {
    match (paired, of_medians) {
        (Some(_), Some(m)) => format!("{} ({m:.2})", verdict(paired, target, at_least)),
        _ => verdict(paired.or(of_medians), target, at_least),
    }
}

/// "median (min–max)" of per-round ratios.
fn paired_cell(ratios: Vec<f64>) -> String {
    let (lo, hi) = ratios.iter().fold((f64::INFINITY, 0.0_f64), |(lo, hi), r| {
        (lo.min(*r), hi.max(*r))
    });
    match median(ratios) {
        Some(mid) => format!("{mid:.2} ({lo:.2}–{hi:.2})"),
        None => "–".to_owned(),
    }
}

/// The A/A control: two identical raw paho clients compared as this crate is with raw
/// paho. Their ratios would be 1.00 on a quiet machine; how far they stray is what noise
/// alone does to a ratio of one run.
fn control(res: &Results) -> String {
    let mut md = String::from(
        "### A/A control: raw paho against itself\n\n\
         *paho tuned (control)* is a second raw paho client identical to *paho tuned*, run \
         in the same rounds. Each cell: the median of the per-round ratios to *paho tuned*, \
         and their range (lower is better for CPU and latency).\n\n\
         | QoS | payload | throughput: control / paho | aiomqtt / paho \
         | CPU per message: control / paho | aiomqtt / paho |\n\
         |---|---|:-:|:-:|:-:|:-:|\n",
    );
    for &case in &res.cases {
        let rows = |metric: fn(&Sample) -> f64| {
            (
                paired_cell(paired(
                    res,
                    Variant::RawControl,
                    Variant::RawTuned,
                    case,
                    metric,
                )),
                paired_cell(paired(
                    res,
                    Variant::OursTuned,
                    Variant::RawTuned,
                    case,
                    metric,
                )),
            )
        };
        let (rate_control, rate_ours) = rows(Sample::rate);
        let (cpu_control, cpu_ours) = rows(Sample::cpu_per_message);
        let _ = writeln!(
            md,
            "| {} | {} | {rate_control} | {rate_ours} | {cpu_control} | {cpu_ours} |",
            case.qos,
            payload_label(case.payload),
        );
    }
    if !res.latency.is_empty() {
        md.push_str("\n| QoS | latency p50: control / paho | aiomqtt / paho |\n|---|:-:|:-:|\n");
        for q in LATENCY_QOS {
            let against_raw = |v: Variant| paired_cell(paired_p50(res, v, Variant::RawTuned, q));
            let _ = writeln!(
                md,
                "| {q} | {} | {} |",
                against_raw(Variant::RawControl),
                against_raw(Variant::OursTuned)
            );
        }
    }
    md.push('\n');
    md
}

/// One line per target: met or missed, with the worst case.
pub fn targets(res: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, pairs: Vec<(String, Option<f64>)>, target: f64, at_least: bool| {
        let known: Vec<(String, f64)> = pairs
            .into_iter()
            .filter_map(|(k, r)| r.map(|r| (k, r)))
            .collect();
        if known.is_empty() {
            return;
        }
        let missed: Vec<String> = known
            .iter()
            .filter(|(_, r)| met(Some(*r), target, at_least) == Some(false))
            .map(|(k, r)| format!("{k} {r:.2}"))
            .collect();
        let worst = known.iter().map(|(_, r)| *r).fold(
            if at_least { f64::INFINITY } else { 0.0 },
            |a, b| {
                if at_least { a.min(b) } else { a.max(b) }
            },
        );
        if missed.is_empty() {
            out.push(format!("✅ {name}: met (worst {worst:.2})"));
        } else {
            out.push(format!("❌ {name}: missed at {}", missed.join(", ")));
        }
    };
    let per_case = |a: Variant, b: Variant, metric: fn(&Sample) -> f64| {
        res.cases
            .iter()
            .map(|&c| {
                (
                    format!("QoS {} {}", c.qos, payload_label(c.payload)),
                    median(paired(res, a, b, c, metric)),
                )
            })
            .collect::<Vec<_>>()
    };
    check(
        "throughput aiomqtt tuned / paho tuned ≥ 0.95 at every QoS and payload (paired)",
        per_case(Variant::OursTuned, Variant::RawTuned, Sample::rate),
        THROUGHPUT_TARGET,
        true,
    );
    check(
        "CPU per message aiomqtt tuned ≤ paho tuned at every QoS and payload (paired)",
        per_case(
            Variant::OursTuned,
            Variant::RawTuned,
            Sample::cpu_per_message,
        ),
        CPU_TARGET,
        false,
    );
    check(
        "latency p50 aiomqtt tuned ≤ 1.05 × paho tuned (paired)",
        LATENCY_QOS
            .iter()
            .map(|&q| {
                (
                    format!("QoS {q}"),
                    median(paired_p50(res, Variant::OursTuned, Variant::RawTuned, q)),
                )
            })
            .collect(),
        LATENCY_TARGET,
        false,
    );
    check(
        "throughput aiomqtt default ≥ paho default (paired)",
        per_case(Variant::OursDefault, Variant::RawDefault, Sample::rate),
        DEFAULT_VS_DEFAULT_TARGET,
        true,
    );
    check(
        "throughput aiomqtt default ≥ 0.95 × paho tuned (paired)",
        per_case(Variant::OursDefault, Variant::RawTuned, Sample::rate),
        DEFAULT_VS_TUNED_TARGET,
        true,
    );
    out
}

/// Median and largest (max − min) / median of the throughput cells.
fn spread(res: &Results) -> Option<(f64, f64)> {
    let mut spreads = Vec::new();
    for &case in &res.cases {
        for v in Variant::EVERY {
            let rates: Vec<f64> = res.samples(v, case).map(Sample::rate).collect();
            let (Some(mid), true) = (median(rates.clone()), rates.len() > 1) else {
                continue;
            };
            let (lo, hi) = rates.iter().fold((f64::INFINITY, 0.0_f64), |(lo, hi), r| {
                (lo.min(*r), hi.max(*r))
            });
            spreads.push((hi - lo) / mid);
        }
    }
    let max = spreads.iter().copied().fold(0.0, f64::max);
    Some((median(spreads)?, max))
}

/// The system load average, "1.00 0.50 0.25".
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// Every sample, one line each.
pub fn csv(res: &Results) -> String {
    let mut out = String::from(
        "kind,round,client,qos,payload,value,unit,received,expected,refused,\
         cpu_us_per_msg,cpu_paho_receive,cpu_paho_send,cpu_rest\n",
    );
    for p in &res.sweep {
        let _ = writeln!(
            out,
            "sweep-window-{},0,paho-tuned,{},{},{:.1},msg/s,,,,,,,",
            p.window, p.case.qos, p.case.payload, p.rate
        );
    }
    for r in &res.throughput {
        let _ = writeln!(
            out,
            "throughput,{},{},{},{},{:.1},msg/s,{},{},{},{:.2},{:.2},{:.2},{:.2}",
            r.round,
            r.variant.key(),
            r.case.qos,
            r.case.payload,
            r.sample.rate(),
            r.sample.received,
            r.sample.expected,
            r.sample.refused,
            r.sample.cpu_per_message(),
            r.sample.cpu_split().0,
            r.sample.cpu_split().1,
            r.sample.cpu_split().2
        );
    }
    for r in &res.latency {
        for (kind, d) in [("latency-p50", r.p50), ("latency-p99", r.p99)] {
            let _ = writeln!(
                out,
                "{kind},{},{},{},{},{:.1},us,,,,,,,",
                r.round,
                r.variant.key(),
                r.qos,
                crate::LATENCY_PAYLOAD,
                d.as_secs_f64() * 1e6
            );
        }
    }
    for m in &res.memory {
        let _ = writeln!(
            out,
            "memory-peak,0,{},0,{},{},KiB,{},{},,,,,",
            m.subscriber.label().replace(',', ";"),
            crate::mem::PAYLOAD,
            m.peak_kb,
            m.queued,
            m.published
        );
    }
    out
}

fn color(v: Variant) -> &'static str {
    match v {
        Variant::OursTuned => "#1f4e9c",
        Variant::RawTuned => "#d9661f",
        Variant::OursDefault => "#8fb3e6",
        Variant::RawDefault => "#f4bf8e",
        Variant::RawControl => "#8c8c8c",
    }
}

fn short(v: f64) -> String {
    let whole_thousands = (v / 1000.0).fract() == 0.0;
    if v >= 100_000.0 || (v >= 1000.0 && whole_thousands) {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

/// A "nice" axis step (1, 2 or 5 × 10^k) for about five ticks.
fn nice_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1.0);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// Grouped bars: one panel per payload, one group per QoS, one bar per client.
/// One client's (or link's) samples of one case over the rounds, for the modes that print
/// their own tables (`--relay-cost`, `--peers`).
#[derive(Default)]
pub struct Cell {
    pub rate: Vec<f64>,
    pub cpu: Vec<f64>,
    pub p50: Vec<f64>,
    pub p99: Vec<f64>,
    /// Runs that failed (not counted in the others).
    pub failed: usize,
}

pub fn svg(res: &Results, variants: &[Variant], subtitle: &str, footnote: &str) -> String {
    let payloads: Vec<usize> = {
        let mut p: Vec<usize> = res.cases.iter().map(|c| c.payload).collect();
        p.dedup();
        p
    };
    let (panel_w, plot_h, left, top) = (420.0, 260.0, 70.0, 70.0);
    let gap = 90.0;
    let width = left + payloads.len() as f64 * (panel_w + gap);
    let height = top + plot_h + 110.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.0}" y="24" text-anchor="middle" font-size="16" font-weight="bold">Pub/sub throughput: aiomqtt vs raw paho-mqtt (msg/s, median)</text>"#,
        width / 2.0
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.0}" y="44" text-anchor="middle" font-size="11" fill="#444">{}</text>"##,
        width / 2.0,
        escape(subtitle)
    );
    for (pi, &payload) in payloads.iter().enumerate() {
        let x0 = left + pi as f64 * (panel_w + gap);
        let cases: Vec<Case> = res
            .cases
            .iter()
            .copied()
            .filter(|c| c.payload == payload)
            .collect();
        let max = cases
            .iter()
            .flat_map(|&c| variants.iter().filter_map(move |&v| res.rate(v, c)))
            .fold(0.0, f64::max);
        let step = nice_step(max * 1.1);
        let y_max = (max * 1.1 / step).ceil().max(1.0) * step;
        let y = |v: f64| top + plot_h - v / y_max * plot_h;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{} payload</text>"#,
            x0 + panel_w / 2.0,
            top - 12.0,
            payload_label(payload)
        );
        let mut tick = 0.0;
        while tick <= y_max + 1e-9 {
            let ty = y(tick);
            let _ = writeln!(
                s,
                r##"<line x1="{x0:.1}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
                x0 + panel_w,
                x0 - 6.0,
                ty + 4.0,
                short(tick)
            );
            tick += step;
        }
        let _ = writeln!(
            s,
            r##"<line x1="{x0:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#000"/>"##,
            top + plot_h,
            x0 + panel_w,
            top + plot_h
        );
        let group_w = panel_w / cases.len() as f64;
        let bar_w = ((group_w - 30.0) / variants.len().max(1) as f64).min(28.0);
        for (gi, &case) in cases.iter().enumerate() {
            let gx = x0 + gi as f64 * group_w;
            let bars_w = bar_w * variants.len() as f64;
            let bx0 = gx + (group_w - bars_w) / 2.0;
            for (vi, &v) in variants.iter().enumerate() {
                let Some(rate) = res.rate(v, case) else {
                    continue;
                };
                let bx = bx0 + vi as f64 * bar_w;
                let by = y(rate);
                let _ = writeln!(
                    s,
                    r#"<rect x="{:.1}" y="{by:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} QoS {} {}: {} msg/s</title></rect>"#,
                    bx + 1.0,
                    bar_w - 2.0,
                    top + plot_h - by,
                    color(v),
                    v.label(),
                    case.qos,
                    payload_label(payload),
                    thousands(rate)
                );
                let (tx, ty) = (bx + bar_w / 2.0 + 3.5, by - 4.0);
                let _ = writeln!(
                    s,
                    r#"<text x="{tx:.1}" y="{ty:.1}" font-size="10" transform="rotate(-90 {tx:.1} {ty:.1})">{}</text>"#,
                    short(rate)
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">QoS {}</text>"#,
                gx + group_w / 2.0,
                top + plot_h + 18.0,
                case.qos
            );
        }
    }
    let legend_y = top + plot_h + 50.0;
    let mut lx = left;
    for &v in variants {
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="14" height="14" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            legend_y - 11.0,
            color(v),
            lx + 20.0,
            legend_y,
            v.legend()
        );
        lx += 20.0 + 7.0 * v.legend().len() as f64 + 24.0;
    }
    let _ = writeln!(
        s,
        r##"<text x="{left:.1}" y="{:.1}" font-size="11" fill="#444">{}</text>"##,
        legend_y + 28.0,
        escape(footnote)
    );
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;

    /// A run of 1,000 messages in `ms` milliseconds.
    fn run(round: usize, variant: Variant, ms: u64) -> ThroughputRun {
        ThroughputRun {
            round,
            variant,
            case: CASE,
            sample: Sample {
                received: 1000,
                expected: 1000,
                elapsed: Duration::from_millis(ms),
                refused: 0,
                cpu: Cpu::default(),
            },
        }
    }

    const CASE: Case = Case {
        qos: 0,
        payload: 64,
    };

    #[test]
    fn paired_ratios_pair_rounds_and_skip_a_round_without_a_partner() {
        let res = Results {
            throughput: vec![
                run(1, Variant::OursTuned, 100),
                run(1, Variant::RawTuned, 200),
                run(2, Variant::OursTuned, 400),
                run(2, Variant::RawTuned, 400),
                // Round 3: raw paho's run failed.
                run(3, Variant::OursTuned, 50),
            ],
            ..Results::default()
        };
        let ratios = paired(
            &res,
            Variant::OursTuned,
            Variant::RawTuned,
            CASE,
            Sample::rate,
        );
        assert_eq!(ratios, vec![2.0, 1.0]);
        // The median of the pairs is not the ratio of the medians: the slow round 2 and
        // the unpaired round 3 move the medians, not the pairs.
        let paired = median(ratios.clone());
        assert_eq!(paired, Some(1.5));
        let of_medians = ratio(
            res.rate(Variant::OursTuned, CASE),
            res.rate(Variant::RawTuned, CASE),
        );
        assert_eq!(of_medians, Some(10_000.0 / 3_750.0));
        assert_eq!(
            both_ratios(paired, of_medians, 0.95, true),
            "✅ 1.50 (2.67)"
        );
        assert_eq!(both_ratios(Some(0.9), None, 0.95, true), "❌ 0.90");
    }
}
