//! Dependency cycles between operations, Elle-style: G0 and G1c and their -process/-realtime
//! variants.
//!
//! Nodes are completed send/poll/txn ops. Edges, each carrying a set of relations:
//! - ww (only with `Options::ww_deps`): the writer of a value precedes the writer of the next
//!   value in the key's version order;
//! - wr: the writer of a value precedes every other op that read it;
//! - realtime: an ok op precedes every op invoked after it completed (a transitive reduction,
//!   as Elle builds it: linear in history length for bounded concurrency);
//! - process: each ok op precedes the same process's next ok op.
//!
//! rw (anti-dependency) edges are not used, as in Jepsen's kafka checker. Jepsen asks Elle for
//! strict-serializable, which adds realtime edges only; process edges are implied by realtime
//! ones, so adding them finds no new cycles, it only names some of them `-process` where Jepsen
//! says `-realtime`. Both are in the same allowed set, so the verdict is the same.
//!
//! Search: Tarjan's SCCs of the whole graph; then in each non-trivial SCC, for each anomaly in
//! Elle's order (G0, G1c, G0-process, G1c-process, G0-realtime, G1c-realtime), skipping those
//! implied by one already found in that SCC: SCCs of the SCC restricted to the anomaly's
//! relations, then an edge of the required relation inside one of them, closed into a cycle by
//! a BFS shortest path. Every step is linear, so the search cannot time out and Elle's
//! `*-cycle-exists` fallbacks are never needed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::analysis::Analysis;
use crate::history::OpType;
use crate::report::{Condensed, Cycle, CycleStep, Dependency, ErrorType};

const WW: u8 = 1;
const WR: u8 = 2;
const REALTIME: u8 = 4;
const PROCESS: u8 = 8;

/// How many candidate closing edges to try per anomaly and SCC, keeping the shortest cycle.
const CANDIDATES: usize = 8;

/// One anomaly to look for: the relations a cycle may use, and the one it must use.
struct Spec {
    kind: ErrorType,
    allowed: u8,
    required: u8,
    /// Needs a wr edge besides the required one (G1c variants whose required relation is not wr).
    needs_wr: bool,
    /// Anomalies a cycle of this kind implies, which need no separate search.
    implies: &'static [ErrorType],
}

const SPECS: [Spec; 6] = {
    use ErrorType::*;
    [
        Spec { kind: G0, allowed: WW, required: WW, needs_wr: false, implies: &[G1c, G0Process, G1cProcess, G0Realtime, G1cRealtime] },
        Spec { kind: G1c, allowed: WW | WR, required: WR, needs_wr: false, implies: &[G1cProcess, G1cRealtime] },
        Spec { kind: G0Process, allowed: WW | PROCESS, required: PROCESS, needs_wr: false, implies: &[G1cProcess, G0Realtime, G1cRealtime] },
        Spec { kind: G1cProcess, allowed: WW | WR | PROCESS, required: PROCESS, needs_wr: true, implies: &[G1cRealtime] },
        Spec { kind: G0Realtime, allowed: WW | REALTIME, required: REALTIME, needs_wr: false, implies: &[G1cRealtime] },
        Spec { kind: G1cRealtime, allowed: WW | WR | REALTIME, required: REALTIME, needs_wr: true, implies: &[] },
    ]
};

/// Cycles found, by anomaly; and whether the graph had no edges at all.
pub(crate) struct Cycles {
    pub by_kind: BTreeMap<ErrorType, Condensed<Cycle>>,
    pub empty_graph: bool,
}

/// Adjacency lists: node -> (successor, relations), successors ascending.
type Adjacency = Vec<Vec<(usize, u8)>>;

struct Graph {
    /// Node -> history position.
    pos: Vec<usize>,
    adjacency: Adjacency,
}

fn build_graph(analysis: &Analysis, ww_deps: bool) -> Graph {
    let ops = analysis.ops;
    let mut node_of = vec![usize::MAX; ops.len()];
    let mut pos = Vec::new();
    for (p, op) in ops.iter().enumerate() {
        if op.is_log_op() && op.kind != OpType::Invoke {
            node_of[p] = pos.len();
            pos.push(p);
        }
    }
    // Unsorted, possibly repeated successors first; sorted and merged below.
    let mut adjacency: Adjacency = vec![Vec::new(); pos.len()];
    let mut link = |from: usize, to: usize, rel: u8| {
        let (a, b) = (node_of[from], node_of[to]);
        if a != b && a != usize::MAX && b != usize::MAX {
            adjacency[a].push((b, rel));
        }
    };

    if ww_deps {
        for (&key, writers) in &analysis.writer_of {
            let Some(order) = analysis.order(key) else { continue };
            for (&value, &writer) in writers {
                let previous_writer = order.previous_value(value).and_then(|previous| writers.get(&previous));
                if let Some(&previous_writer) = previous_writer {
                    link(previous_writer, writer, WW);
                }
            }
        }
    }
    for (reader, reads) in analysis.reads.iter().enumerate() {
        for (&key, values) in reads {
            for &value in values {
                if let Some(writer) = analysis.writer(key, value) {
                    link(writer, reader, WR);
                }
            }
        }
    }

    // Realtime: `completed` holds ok ops not yet known to precede a later-completed ok op.
    let mut completed: BTreeSet<usize> = BTreeSet::new();
    let mut realtime_in: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut last_ok_of_process: BTreeMap<u64, usize> = BTreeMap::new();
    for (p, op) in ops.iter().enumerate() {
        if !op.is_log_op() {
            continue;
        }
        match op.kind {
            OpType::Invoke => {
                if let Some(completion) = analysis.pair[p] {
                    for &before in &completed {
                        link(before, completion, REALTIME);
                        realtime_in.entry(completion).or_default().push(before);
                    }
                }
            }
            OpType::Ok => {
                for before in realtime_in.remove(&p).unwrap_or_default() {
                    completed.remove(&before);
                }
                completed.insert(p);
                if let Some(previous) = last_ok_of_process.insert(op.process, p) {
                    link(previous, p, PROCESS);
                }
            }
            OpType::Info | OpType::Fail => {
                realtime_in.remove(&p);
            }
        }
    }

    for list in &mut adjacency {
        list.sort_unstable();
        let mut merged: Vec<(usize, u8)> = Vec::with_capacity(list.len());
        for &(to, rel) in list.iter() {
            match merged.last_mut() {
                Some((last, rels)) if *last == to => *rels |= rel,
                _ => merged.push((to, rel)),
            }
        }
        *list = merged;
    }
    Graph { pos, adjacency }
}

/// Tarjan's algorithm (iterative) over edges whose relations intersect `mask`.
/// Returns the component id of every node.
fn components(adjacency: &Adjacency, mask: u8) -> Vec<usize> {
    const UNVISITED: usize = usize::MAX;
    let n = adjacency.len();
    let mut index = vec![UNVISITED; n];
    let mut lowlink = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut component = vec![UNVISITED; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut calls: Vec<(usize, usize)> = Vec::new();
    let mut next_index = 0;
    let mut next_component = 0;
    for root in 0..n {
        if index[root] != UNVISITED {
            continue;
        }
        index[root] = next_index;
        lowlink[root] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root] = true;
        calls.push((root, 0));
        while let Some(&(v, cursor)) = calls.last() {
            if let Some(&(w, rel)) = adjacency[v].get(cursor) {
                calls.last_mut().expect("non-empty").1 += 1;
                if rel & mask == 0 {
                    continue;
                }
                if index[w] == UNVISITED {
                    index[w] = next_index;
                    lowlink[w] = next_index;
                    next_index += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    lowlink[v] = lowlink[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                lowlink[parent] = lowlink[parent].min(lowlink[v]);
            }
            if lowlink[v] == index[v] {
                loop {
                    let w = stack.pop().expect("v is on the stack");
                    on_stack[w] = false;
                    component[w] = next_component;
                    if w == v {
                        break;
                    }
                }
                next_component += 1;
            }
        }
    }
    component
}

/// Shortest path `from -> ... -> to` over `mask` edges inside component `scc` of `component`.
fn shortest_path(adjacency: &Adjacency, component: &[usize], mask: u8, from: usize, to: usize) -> Option<Vec<usize>> {
    let scc = component[from];
    let mut parent = vec![usize::MAX; adjacency.len()];
    let mut queue = VecDeque::from([from]);
    parent[from] = from;
    while let Some(v) = queue.pop_front() {
        if v == to {
            let mut path = vec![to];
            let mut at = to;
            while at != from {
                at = parent[at];
                path.push(at);
            }
            path.reverse();
            return Some(path);
        }
        for &(w, rel) in &adjacency[v] {
            if rel & mask != 0 && component[w] == scc && parent[w] == usize::MAX {
                parent[w] = v;
                queue.push_back(w);
            }
        }
    }
    None
}

/// A cycle matching `spec` in `adjacency` (one SCC of the full graph), as local node ids with
/// the first repeated at the end, and the relations of each step.
fn find_cycle(adjacency: &Adjacency, spec: &Spec) -> Option<(Vec<usize>, Vec<u8>)> {
    let component = components(adjacency, spec.allowed);
    let mut best: Option<Vec<usize>> = None;
    let candidates = adjacency
        .iter()
        .enumerate()
        .flat_map(|(u, edges)| edges.iter().map(move |&(v, rel)| (u, v, rel)))
        .filter(|&(u, v, rel)| rel & spec.required != 0 && component[u] == component[v])
        .take(CANDIDATES);
    for (u, v, _) in candidates {
        // u -> v, then back v -> ... -> u.
        let Some(back) = shortest_path(adjacency, &component, spec.allowed, v, u) else { continue };
        if best.as_ref().is_none_or(|b| back.len() + 1 < b.len()) {
            let mut cycle = vec![u];
            cycle.extend(back);
            best = Some(cycle);
        }
    }
    let cycle = best?;
    let rels = cycle
        .windows(2)
        .map(|pair| adjacency[pair[0]].iter().find(|&&(w, _)| w == pair[1]).map(|&(_, rel)| rel & spec.allowed).expect("cycle steps are edges"))
        .collect();
    Some((cycle, rels))
}

/// Picks one relation per step: the required one on the closing edge, a wr elsewhere if the
/// spec needs one, then ww, wr, realtime, process in that order.
fn label_steps(rels: &[u8], spec: &Spec) -> Vec<u8> {
    let mut labels = vec![0u8; rels.len()];
    labels[0] = spec.required;
    if spec.needs_wr {
        if let Some(i) = (1..rels.len()).find(|&i| rels[i] & WR != 0) {
            labels[i] = WR;
        }
    }
    for (label, &rel) in labels.iter_mut().zip(rels) {
        if *label == 0 {
            *label = [WW, WR, REALTIME, PROCESS].into_iter().find(|&r| rel & r != 0).expect("every step has a relation");
        }
    }
    labels
}

/// Why `from` precedes `to` under relation `label`.
fn explain(analysis: &Analysis, from: usize, to: usize, label: u8) -> Dependency {
    match label {
        WW => analysis.writes[to]
            .iter()
            .find_map(|(&key, values)| {
                values.iter().find_map(|&next_value| {
                    let value = analysis.order(key)?.previous_value(next_value)?;
                    (analysis.writer(key, value) == Some(from)).then_some(Dependency::Ww { key, value, next_value })
                })
            })
            .expect("a ww edge has a witness"),
        WR => analysis.reads[to]
            .iter()
            .find_map(|(&key, values)| values.iter().find(|&&value| analysis.writer(key, value) == Some(from)).map(|&value| Dependency::Wr { key, value }))
            .expect("a wr edge has a witness"),
        REALTIME => Dependency::Realtime,
        _ => Dependency::Process,
    }
}

/// Check 10: G0/G1c cycles and their -process/-realtime variants.
pub(crate) fn cycles(analysis: &Analysis, ww_deps: bool) -> Cycles {
    let graph = build_graph(analysis, ww_deps);
    let empty_graph = graph.adjacency.iter().all(Vec::is_empty);
    let mut by_kind: BTreeMap<ErrorType, Vec<Cycle>> = BTreeMap::new();

    let component = components(&graph.adjacency, WW | WR | REALTIME | PROCESS);
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (node, &c) in component.iter().enumerate() {
        members.entry(c).or_default().push(node);
    }
    let mut sccs: Vec<Vec<usize>> = members.into_values().filter(|nodes| nodes.len() > 1).collect();
    sccs.sort();

    let mut local_id = vec![usize::MAX; graph.pos.len()];
    for scc in sccs {
        for (local, &node) in scc.iter().enumerate() {
            local_id[node] = local;
        }
        let adjacency: Adjacency = scc
            .iter()
            .map(|&node| graph.adjacency[node].iter().filter(|&&(w, _)| local_id[w] != usize::MAX).map(|&(w, rel)| (local_id[w], rel)).collect())
            .collect();

        let mut implied: BTreeSet<ErrorType> = BTreeSet::new();
        for spec in &SPECS {
            if implied.contains(&spec.kind) {
                continue;
            }
            let Some((nodes, rels)) = find_cycle(&adjacency, spec) else { continue };
            let labels = label_steps(&rels, spec);
            let positions: Vec<usize> = nodes.iter().map(|&local| graph.pos[scc[local]]).collect();
            let steps = positions
                .windows(2)
                .zip(&labels)
                .map(|(pair, &label)| CycleStep {
                    from: analysis.index(pair[0]),
                    to: analysis.index(pair[1]),
                    dependency: explain(analysis, pair[0], pair[1], label),
                })
                .collect();
            by_kind.entry(spec.kind).or_default().push(Cycle { ops: positions.iter().map(|&p| analysis.index(p)).collect(), steps });
            implied.extend(spec.implies);
        }

        for &node in &scc {
            local_id[node] = usize::MAX;
        }
    }
    Cycles { by_kind: by_kind.into_iter().map(|(kind, cycles)| (kind, Condensed::all(cycles))).collect(), empty_graph }
}

#[cfg(test)]
mod tests {
    use crate::history::OpType::{Invoke, Ok};
    use crate::history::{Mop, F};
    use crate::report::*;
    use crate::test_support::*;
    use crate::{analyze, History};

    const WW_DEPS: Options = Options { ww_deps: true, sub_via_subscribe: false, deleted_below: std::collections::BTreeMap::new() };

    /// Two concurrent sends to x and y; `b_offsets` places b's sends as `(x, y)`.
    fn write_cycle(b_offsets: (i64, i64)) -> History {
        Hb::new()
            .op(0, Invoke, F::Send, vec![Mop::send(X, A), Mop::send(Y, A)])
            .op(1, Invoke, F::Send, vec![Mop::send(X, B), Mop::send(Y, B)])
            .op(0, Ok, F::Send, vec![Mop::sent(X, 0, A), Mop::sent(Y, 1, A)])
            .op(1, Ok, F::Send, vec![Mop::sent(X, b_offsets.0, B), Mop::sent(Y, b_offsets.1, B)])
            .op(2, Invoke, F::Poll, vec![Mop::poll()])
            .op(2, Ok, F::Poll, vec![Mop::polled([(X, vec![(0, A), (1, B)]), (Y, vec![(0, B), (1, A)])])])
            .history()
    }

    #[test]
    fn g0_is_a_write_cycle_and_is_allowed() {
        // Proves sends ordered a<b on x but b<a on y form a G0 cycle under ww deps, that G0 is
        // allowed (Kafka does not isolate writes), and that consistent orders form none.
        let report = analyze(&write_cycle((1, 0)), &WW_DEPS);
        assert_eq!(report.error_types, vec![ErrorType::G0]);
        assert!(report.valid, "{report}");
        let cycle = &report.errors.cycles[&ErrorType::G0].errs[0];
        assert_eq!(cycle.ops.len(), 3);
        assert_eq!(cycle.ops.first(), cycle.ops.last());
        let mut dependencies: Vec<Dependency> = cycle.steps.iter().map(|s| s.dependency.clone()).collect();
        dependencies.sort_by_key(|d| format!("{d:?}"));
        assert_eq!(dependencies, vec![Dependency::Ww { key: X, value: A, next_value: B }, Dependency::Ww { key: Y, value: B, next_value: A }]);

        let consistent = Hb::new()
            .op(0, Invoke, F::Send, vec![Mop::send(X, A), Mop::send(Y, A)])
            .op(1, Invoke, F::Send, vec![Mop::send(X, B), Mop::send(Y, B)])
            .op(0, Ok, F::Send, vec![Mop::sent(X, 0, A), Mop::sent(Y, 0, A)])
            .op(1, Ok, F::Send, vec![Mop::sent(X, 1, B), Mop::sent(Y, 1, B)])
            .op(2, Invoke, F::Poll, vec![Mop::poll()])
            .op(2, Ok, F::Poll, vec![Mop::polled([(X, vec![(0, A), (1, B)]), (Y, vec![(0, A), (1, B)])])])
            .history();
        assert!(analyze(&consistent, &WW_DEPS).errors.cycles.is_empty());
        assert!(analyze(&write_cycle((1, 0)), &Options::default()).errors.cycles.is_empty(), "no ww edges without ww_deps");
    }

    #[test]
    fn g1c_is_circular_information_flow() {
        // Proves two concurrent txns that each read the other's send form a G1c cycle of wr edges,
        // which is invalid without ww deps; each reading only its predecessor's send is fine.
        let history = |second_reads: u64| {
            Hb::new()
                .op(0, Invoke, F::Txn, vec![Mop::send(X, A), Mop::poll()])
                .op(1, Invoke, F::Txn, vec![Mop::send(Y, B), Mop::poll()])
                .op(0, Ok, F::Txn, vec![Mop::sent(X, 0, A), Mop::polled([(Y, vec![(0, B)])])])
                .op(1, Ok, F::Txn, vec![Mop::sent(Y, 0, B), Mop::polled([(X, vec![(0, second_reads)])])])
                .history()
        };
        let report = analyze(&history(A), &Options::default());
        assert_eq!(report.bad_error_types, vec![ErrorType::G1c]);
        let cycle = &report.errors.cycles[&ErrorType::G1c].errs[0];
        assert_eq!(cycle.ops, vec![2, 3, 2]);
        assert_eq!(
            cycle.steps,
            vec![
                CycleStep { from: 2, to: 3, dependency: Dependency::Wr { key: X, value: A } },
                CycleStep { from: 3, to: 2, dependency: Dependency::Wr { key: Y, value: B } },
            ]
        );
        assert!(analyze(&history(A), &WW_DEPS).valid, "G1c is allowed with ww deps");

        let one_way = Hb::new()
            .op(0, Invoke, F::Txn, vec![Mop::send(X, A), Mop::poll()])
            .op(1, Invoke, F::Txn, vec![Mop::send(Y, B), Mop::poll()])
            .op(0, Ok, F::Txn, vec![Mop::sent(X, 0, A), Mop::polled([(Y, vec![(0, B)])])])
            .op(1, Ok, F::Txn, vec![Mop::sent(Y, 0, B), Mop::polled([(X, vec![])])])
            .op(2, Invoke, F::Poll, vec![Mop::poll()])
            .op(2, Ok, F::Poll, vec![Mop::polled([(X, vec![(0, A)])])])
            .history();
        let report = analyze(&one_way, &Options::default());
        assert!(report.valid, "{report}");
    }

    #[test]
    fn g1c_mixes_ww_and_wr_edges() {
        // Proves a txn whose send follows another txn's send, while that other txn read its
        // earlier send, is a G1c with one ww and one wr step (under ww deps).
        let history = Hb::new()
            .op(0, Invoke, F::Txn, vec![Mop::send(X, A), Mop::send(Y, C)])
            .op(1, Invoke, F::Txn, vec![Mop::poll(), Mop::send(Y, B)])
            .op(0, Ok, F::Txn, vec![Mop::sent(X, 0, A), Mop::sent(Y, 2, C)])
            .op(1, Ok, F::Txn, vec![Mop::polled([(X, vec![(0, A)])]), Mop::sent(Y, 1, B)])
            .op(2, Invoke, F::Poll, vec![Mop::poll()])
            .op(2, Ok, F::Poll, vec![Mop::polled([(Y, vec![(1, B), (2, C)])])])
            .history();
        let report = analyze(&history, &WW_DEPS);
        assert_eq!(report.error_types, vec![ErrorType::G1c], "{report}");
        let steps: Vec<Dependency> = report.errors.cycles[&ErrorType::G1c].errs[0].steps.iter().map(|s| s.dependency.clone()).collect();
        assert!(steps.contains(&Dependency::Wr { key: X, value: A }), "{steps:?}");
        assert!(steps.contains(&Dependency::Ww { key: Y, value: B, next_value: C }), "{steps:?}");
        assert!(analyze(&history, &Options::default()).errors.cycles.is_empty(), "one wr edge alone is no cycle");
    }

    /// A poll that completes, then a send (by `sender`) of the value the poll already returned.
    fn read_from_the_future(sender: u64, concurrent: bool) -> History {
        let poll = Hb::new().op(0, Invoke, F::Poll, vec![Mop::poll()]);
        let (first, second) =
            (|hb: Hb| hb.op(sender, Invoke, F::Send, vec![Mop::send(X, A)]), |hb: Hb| hb.op(0, Ok, F::Poll, vec![Mop::polled([(X, vec![(0, A)])])]));
        let hb = if concurrent { second(first(poll)) } else { first(second(poll)) };
        hb.op(sender, Ok, F::Send, vec![Mop::sent(X, 0, A)]).history()
    }

    #[test]
    fn g1c_realtime_is_reading_a_value_before_it_was_sent() {
        // Proves a poll that completed before the send of the value it returned even began forms
        // a wr+realtime cycle (G1c-realtime, invalid), while an overlapping send and poll do not.
        let report = analyze(&read_from_the_future(1, false), &Options::default());
        assert_eq!(report.bad_error_types, vec![ErrorType::G1cRealtime], "{report}");
        let steps = &report.errors.cycles[&ErrorType::G1cRealtime].errs[0].steps;
        assert!(steps.iter().any(|s| s.dependency == Dependency::Realtime));
        assert!(steps.iter().any(|s| s.dependency == Dependency::Wr { key: X, value: A }));
        assert!(analyze(&read_from_the_future(1, true), &Options::default()).valid);
        assert!(analyze(&read_from_the_future(1, false), &WW_DEPS).valid, "allowed with ww deps");
    }

    #[test]
    fn g1c_process_is_the_same_process_reading_its_future_send() {
        // Proves the same anomaly within one process uses the process edge (G1c-process), which
        // implies, and so replaces, G1c-realtime.
        let report = analyze(&read_from_the_future(0, false), &Options::default());
        assert_eq!(report.bad_error_types, vec![ErrorType::G1cProcess], "{report}");
        let steps = &report.errors.cycles[&ErrorType::G1cProcess].errs[0].steps;
        assert!(steps.iter().any(|s| s.dependency == Dependency::Process));
    }

    /// Send b to x at offset 1, then (by `second`, after b completed) send a at offset 0.
    fn ww_against_realtime(second: u64) -> History {
        Hb::new()
            .op(0, Invoke, F::Send, vec![Mop::send(X, B)])
            .op(0, Ok, F::Send, vec![Mop::sent(X, 1, B)])
            .op(second, Invoke, F::Send, vec![Mop::send(X, A)])
            .op(second, Ok, F::Send, vec![Mop::sent(X, 0, A)])
            .op(2, Invoke, F::Poll, vec![Mop::poll()])
            .op(2, Ok, F::Poll, vec![Mop::polled([(X, vec![(0, A), (1, B)])])])
            .history()
    }

    #[test]
    fn g0_variants_order_writes_against_time() {
        // Proves a send that lands before one which completed before it began is G0-realtime
        // (another process) or G0-process (same process): allowed, but reported; within one
        // process it is also a nonmonotonic-send, which is not allowed.
        let report = analyze(&ww_against_realtime(1), &WW_DEPS);
        assert_eq!(report.error_types, vec![ErrorType::G0Realtime], "{report}");
        assert!(report.valid);
        let report = analyze(&ww_against_realtime(0), &WW_DEPS);
        assert!(report.error_types.contains(&ErrorType::G0Process), "{report}");
        assert!(!report.error_types.contains(&ErrorType::G0Realtime), "implied by G0-process");
        assert_eq!(report.bad_error_types, vec![ErrorType::NonmonotonicSend], "the process also wrote behind itself: {report}");
    }
}
