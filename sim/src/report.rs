//! `--report FILE.html`: one self-contained page per run with the produce latency over time and
//! the fault timeline as inline SVG, the violations and the replay command.

use crate::RunResult;
use std::fmt::Write;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Render the report for `runs` (usually one).
pub fn html(runs: &[RunResult]) -> String {
    let mut out = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><title>runnel simulation report</title><style>body{font-family:sans-serif;margin:2em;max-width:1000px}svg{background:#fafafa;border:1px solid #ddd}.bad{color:#b00}.ok{color:#070}code{background:#eee;padding:2px 4px}</style></head><body>");
    for r in runs {
        let o = &r.outcome;
        let _ = write!(
            out,
            "<h1>seed {} &middot; {}</h1><p>faults enabled: <code>{}</code><br>trace hash <code>{:016x}</code>, {} events, {} ms simulated, workload {}</p><p>replay: <code>{}</code></p>",
            r.config.seed,
            r.config.scenario.name,
            escape(&r.plan),
            o.trace_hash,
            o.events,
            o.sim_time_ms,
            if o.completed { "completed" } else { "<span class=bad>did not complete</span>" },
            escape(&r.config.replay_command())
        );
        if o.violations.is_empty() {
            out.push_str("<p class=ok>no violations</p>");
        } else {
            out.push_str("<h2 class=bad>violations</h2><ul>");
            for v in &o.violations {
                let _ = write!(out, "<li>[{} ms] <b>{}</b>: <pre>{}</pre></li>", v.time_ms, escape(&v.checker), escape(&v.what));
            }
            out.push_str("</ul>");
        }
        out.push_str(&latency_svg(r));
        out.push_str(&timeline_svg(r));
        out.push_str("<h2>faults fired</h2><table>");
        for (k, n) in &o.faults_fired {
            let _ = write!(out, "<tr><td>{}</td><td>{n}</td></tr>", escape(k));
        }
        out.push_str("</table>");
    }
    out.push_str("</body></html>");
    out
}

const W: f64 = 960.0;
const H: f64 = 240.0;

fn latency_svg(r: &RunResult) -> String {
    let o = &r.outcome;
    let t_max = o.sim_time_ms.max(1) as f64;
    let l_max = o.produce_latencies.iter().map(|x| x.1).max().unwrap_or(1).max(1) as f64;
    let mut s = format!("<h2>produce latency (acks=all) over time</h2><svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\">");
    for (t, l) in &o.produce_latencies {
        let x = *t as f64 / t_max * (W - 20.0) + 10.0;
        let y = H - 10.0 - (*l as f64 / l_max) * (H - 20.0);
        let _ = write!(s, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"1.5\" fill=\"#36c\"/>");
    }
    for (t, _) in &o.fault_log {
        let x = *t as f64 / t_max * (W - 20.0) + 10.0;
        let _ = write!(s, "<line x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{H}\" stroke=\"#c33\" stroke-opacity=\"0.25\"/>");
    }
    let _ = write!(
        s,
        "<text x=\"12\" y=\"14\" font-size=\"11\">max {l_max} ms</text><text x=\"{}\" y=\"{}\" font-size=\"11\">{t_max} ms</text></svg>",
        W - 80.0,
        H - 2.0
    );
    s
}

fn timeline_svg(r: &RunResult) -> String {
    let o = &r.outcome;
    let t_max = o.sim_time_ms.max(1) as f64;
    let rows = o.fault_log.len().max(1) as f64;
    let height = (rows * 14.0 + 20.0).min(2000.0);
    let mut s = format!("<h2>fault timeline</h2><svg width=\"{W}\" height=\"{height}\">");
    for (i, (t, what)) in o.fault_log.iter().enumerate().take(140) {
        let x = *t as f64 / t_max * (W - 300.0) + 10.0;
        let y = 14.0 + i as f64 * 14.0;
        let _ = write!(
            s,
            "<circle cx=\"{x:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#c33\"/><text x=\"{:.1}\" y=\"{y:.1}\" font-size=\"11\">{} ms: {}</text>",
            y - 4.0,
            x + 6.0,
            t,
            escape(what)
        );
    }
    s.push_str("</svg>");
    s
}
