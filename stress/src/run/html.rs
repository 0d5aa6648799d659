//! The HTML report written beside `report.json` (STRESS.md): world size, step time,
//! recovery times, the schedule's events and the master's restarts on one time axis,
//! drawn by uPlot (the charting library the master's dashboard vendors, MIT), whose script
//! is embedded so the file works offline.

use std::time::Instant;

use serde::Serialize;

use crate::scenario::{Action, Event};
use crate::worker::StepLine;

/// Step lines kept for the charts; beyond this every other one is dropped (the charts
/// stay readable and the file bounded on long runs).
const MAX_POINTS: usize = 20_000;

/// What the charts need from the step lines, as they arrive.
#[derive(Debug)]
pub(crate) struct Timeline {
    t0: Instant,
    /// (seconds since the start, world, step ms)
    steps: Vec<(f64, u32, f64)>,
    /// (seconds since the start, recovery ms)
    recoveries: Vec<(f64, f64)>,
    /// What happened outside the schedule (the master killed and restarted), when.
    marks: Vec<(f64, &'static str)>,
    /// Keep one step line in `stride` (doubles when the list is full).
    stride: u64,
    seen: u64,
}

impl Timeline {
    pub(crate) fn new(t0: Instant) -> Self {
        Self {
            t0,
            steps: Vec::new(),
            recoveries: Vec::new(),
            marks: Vec::new(),
            stride: 1,
            seen: 0,
        }
    }

    /// Something not in the schedule happened now (`master_down`, `master_up`).
    pub(crate) fn mark(&mut self, kind: &'static str) {
        if self.marks.len() < MAX_POINTS {
            self.marks.push((self.t0.elapsed().as_secs_f64(), kind));
        }
    }

    pub(crate) fn step(&mut self, l: &StepLine) {
        let t = self.t0.elapsed().as_secs_f64();
        for r in &l.recovery_ms {
            if self.recoveries.len() < MAX_POINTS {
                self.recoveries.push((t, *r));
            }
        }
        self.seen += 1;
        if !self.seen.is_multiple_of(self.stride) {
            return;
        }
        self.steps.push((t, l.world, l.step_ms));
        if self.steps.len() >= MAX_POINTS {
            self.stride *= 2;
            let mut i = 0u32;
            self.steps.retain(|_| {
                i += 1;
                i.is_multiple_of(2)
            });
        }
    }
}

#[derive(Serialize)]
struct Data<'a> {
    title: &'a str,
    verdict: &'a str,
    steps: &'a [(f64, u32, f64)],
    recoveries: &'a [(f64, f64)],
    /// (seconds, kind, the slot it concerns; none for the master)
    events: Vec<(f64, &'static str, Option<u32>)>,
}

fn kind(a: &Action) -> (&'static str, u32) {
    match a {
        Action::Join(s) => ("join", *s),
        Action::Kill(s) => ("kill", *s),
        Action::Freeze { slot, .. } => ("freeze", *slot),
        Action::Leave(s) => ("leave", *s),
        Action::Reset(s) => ("reset", *s),
        Action::Partition { slot, .. } => ("partition", *slot),
    }
}

/// The whole page: data as JSON, uPlot and the drawing script inline.
pub(crate) fn render(title: &str, verdict: &str, timeline: &Timeline, events: &[Event]) -> String {
    let data = Data {
        title,
        verdict,
        steps: &timeline.steps,
        recoveries: &timeline.recoveries,
        events: events
            .iter()
            .map(|e| {
                let (k, slot) = kind(&e.action);
                (e.at_ms as f64 / 1e3, k, Some(slot))
            })
            .chain(timeline.marks.iter().map(|(t, k)| (*t, *k, None)))
            .collect(),
    };
    // `</` cannot end the script element from inside the JSON.
    let json = serde_json::to_string(&data)
        .expect("report data serializes")
        .replace("</", "<\\/");
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>pccl-stress: {title}</title>\n<style>{css}\n{STYLE}</style>\n\
         <script>{js}</script></head>\n<body>\n<h1>pccl-stress: {title} \
         <span class=\"v\">{verdict}</span></h1>\n\
         <div id=\"world\"></div><div id=\"step\"></div><div id=\"recovery\"></div>\
         <div id=\"events\"></div>\n\
         <script>const DATA = {json};\n{SCRIPT}</script>\n</body></html>\n",
        title = escape(title),
        verdict = escape(verdict),
        css = pccl::master::http::UPLOT_CSS,
        js = pccl::master::http::UPLOT_JS,
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:20px}h1{font-size:20px}\
.v{padding:2px 8px;border-radius:4px;background:#ddd}div{margin:12px 0}";

const SCRIPT: &str = r##"
const W = Math.min(1200, window.innerWidth - 40);
// One time axis for every chart: from the start to the last thing recorded.
const T_MAX = Math.max(1, ...DATA.steps.map((p) => p[0]), ...DATA.recoveries.map((p) => p[0]),
  ...DATA.events.map((e) => e[0]));
function chart(id, title, series, data, points) {
  const opts = { title, width: W, height: 220,
    scales: { x: { time: false, range: () => [0, T_MAX] } },
    axes: [{ label: "seconds since the start" }, {}],
    series: [{ label: "t (s)" }].concat(series.map((s) => Object.assign({ width: 2 }, s,
      points ? { paths: () => null, points: { show: true, size: 8 } } : {}))) };
  new uPlot(opts, data, document.getElementById(id));
}
const st = DATA.steps;
chart("world", "world size (per step line)", [{ label: "world", stroke: "#1f6feb" }],
  [st.map((p) => p[0]), st.map((p) => p[1])], true);
chart("step", "step time (ms)", [{ label: "step ms", stroke: "#2da44e" }],
  [st.map((p) => p[0]), st.map((p) => p[2])], true);
const rec = DATA.recoveries;
if (rec.length) {
  chart("recovery", "recovery time of retried ops (ms)", [{ label: "recovery ms", stroke: "#cf222e" }],
    [rec.map((p) => p[0]), rec.map((p) => p[1])], true);
} else {
  document.getElementById("recovery").textContent = "recovery times: no op needed a retry";
}
const kinds = ["join", "kill", "freeze", "leave", "reset", "partition", "master_down", "master_up"];
const colours = ["#2da44e", "#cf222e", "#0969da", "#8250df", "#bf8700", "#57606a", "#000000", "#6e7781"];
const ev = DATA.events.slice().sort((a, b) => a[0] - b[0]);
const xs = ev.map((e) => e[0]);
const ys = kinds.map((k, i) => ev.map((e) => (e[1] === k ? i + 1 : null)));
chart("events", "events: the schedule's and the master's restarts (y: kind)", kinds.map((k, i) => ({ label: k, stroke: colours[i] })),
  [xs].concat(ys), true);
"##;

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: u64, recovery_ms: Vec<f64>) -> StepLine {
        StepLine {
            slot: 0,
            step,
            world: 3,
            ops: Vec::new(),
            state: 0,
            revision: 0,
            sync_rx: 0,
            api: String::new(),
            failed_ops: 0,
            recovery_ms,
            ops_ms: 5.0,
            step_ms: 10.0,
            ok: true,
        }
    }

    #[test]
    fn the_page_embeds_its_library_and_data() {
        let mut t = Timeline::new(Instant::now());
        for step in 0..3 {
            t.step(&line(step, vec![5.0]));
        }
        t.mark("master_down");
        let events = vec![Event {
            at_ms: 1500,
            action: Action::Kill(1),
        }];
        let html = render("churn</script>", "PASS", &t, &events);
        assert!(html.contains("uPlot"), "the library is inline");
        assert!(!html.contains("src=\"http"), "nothing is fetched");
        assert!(
            html.contains("[1.5,\"kill\",1]"),
            "events are on the time axis"
        );
        assert!(
            html.contains(",\"master_down\",null]"),
            "so are the master's restarts"
        );
        assert!(!html.contains("churn</script>"), "the title is escaped");
        assert_eq!(t.steps.len(), 3);
        assert_eq!(t.recoveries.len(), 3);
    }

    #[test]
    fn long_runs_stay_bounded() {
        let mut t = Timeline::new(Instant::now());
        let l = line(0, Vec::new());
        for _ in 0..(MAX_POINTS * 5) {
            t.step(&l);
        }
        assert!(t.steps.len() < MAX_POINTS);
    }
}
