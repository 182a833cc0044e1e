use super::*;

fn policy() -> Policy {
    Policy {
        target_rps_per_replica: 100.0,
        min: 2,
        max: 8,
        cooldown_s: 30,
        stabilisation_s: 120,
    }
}

fn at(rps: f64) -> Signals {
    Signals {
        rps,
        ..Signals::default()
    }
}

const S: i64 = 1000;

#[test]
fn scales_up_to_what_the_rate_needs() {
    let p = policy();
    let mut st = State::new(&p, 0);
    assert_eq!(evaluate(&p, &mut st, &at(150.0), 0), None, "min covers it");
    let d = evaluate(&p, &mut st, &at(450.0), 5 * S).unwrap();
    assert_eq!((d.from, d.to), (2, 5));
    assert!(d.reason.starts_with("scale up"), "{}", d.reason);
    assert_eq!(st.replicas, 5);
    assert_eq!(st.last_change_ms, Some(5 * S));
}

#[test]
fn cooldown_holds_the_next_change() {
    let p = policy();
    let mut st = State::new(&p, 0);
    assert!(evaluate(&p, &mut st, &at(300.0), 0).is_some());
    assert_eq!(
        evaluate(&p, &mut st, &at(600.0), 10 * S),
        None,
        "in cooldown"
    );
    assert_eq!(
        evaluate(&p, &mut st, &at(600.0), 29 * S),
        None,
        "in cooldown"
    );
    let d = evaluate(&p, &mut st, &at(600.0), 30 * S).unwrap();
    assert_eq!((d.from, d.to), (3, 6));
}

#[test]
fn scale_down_waits_for_the_stabilisation_window() {
    let p = policy();
    let mut st = State::new(&p, 0);
    evaluate(&p, &mut st, &at(700.0), 0).unwrap();
    assert_eq!(st.replicas, 7);
    // The load drops at 60 s: nothing happens while the window still holds the peak.
    for s in (60..120).step_by(5) {
        assert_eq!(evaluate(&p, &mut st, &at(100.0), s * S), None, "at {s}");
    }
    // 120 s after the last peak recommendation, the highest left is the dip's.
    let d = evaluate(&p, &mut st, &at(100.0), 125 * S).unwrap();
    assert_eq!((d.from, d.to), (7, 2));
    assert!(d.reason.starts_with("scale down"), "{}", d.reason);
}

#[test]
fn scale_down_goes_only_to_the_windows_highest_recommendation() {
    let p = policy();
    let mut st = State::new(&p, 0);
    evaluate(&p, &mut st, &at(800.0), 0).unwrap();
    evaluate(&p, &mut st, &at(500.0), 100 * S); // recommends 5, held by the 8 at 0 s
    let d = evaluate(&p, &mut st, &at(100.0), 130 * S).unwrap();
    assert_eq!(
        (d.from, d.to),
        (8, 5),
        "the 5 of 100 s is still in the window"
    );
    assert_eq!(
        evaluate(&p, &mut st, &at(100.0), 200 * S),
        None,
        "the 5 of 100 s holds"
    );
    let d = evaluate(&p, &mut st, &at(100.0), 230 * S).unwrap();
    assert_eq!((d.from, d.to), (5, 2));
}

#[test]
fn a_new_evaluator_does_not_scale_down_before_it_saw_a_window() {
    let p = policy();
    let mut st = State {
        replicas: 6,
        last_change_ms: None,
        observing_since_ms: 1_000 * S,
        recent: Default::default(),
    };
    assert_eq!(evaluate(&p, &mut st, &at(0.0), 1_010 * S), None);
    let d = evaluate(&p, &mut st, &at(0.0), 1_120 * S).unwrap();
    assert_eq!((d.from, d.to), (6, 2));
}

#[test]
fn recommendations_are_clamped_to_min_and_max() {
    let p = policy();
    assert_eq!(p.recommend(0.0), 2);
    assert_eq!(p.recommend(f64::NAN), 2);
    assert_eq!(p.recommend(101.0), 2);
    assert_eq!(p.recommend(201.0), 3);
    assert_eq!(p.recommend(1e12), 8);
    let mut st = State::new(&p, 0);
    let d = evaluate(&p, &mut st, &at(5_000.0), 0).unwrap();
    assert_eq!(d.to, 8);
    assert!(d.reason.contains("(max)"), "{}", d.reason);
    // Replicas outside a changed policy are clamped at once, cooldown or not.
    let narrower = Policy { max: 4, ..p };
    let d = evaluate(&narrower, &mut st, &at(5_000.0), S).unwrap();
    assert_eq!((d.from, d.to), (8, 4));
    let higher_min = Policy { min: 6, ..narrower };
    let higher_min = Policy {
        max: 8,
        ..higher_min
    };
    let mut low = State::new(&p, 0);
    let d = evaluate(&higher_min, &mut low, &at(0.0), 0).unwrap();
    assert_eq!((d.from, d.to), (2, 6));
}

#[test]
fn the_window_memory_stays_small() {
    let p = Policy {
        stabilisation_s: 86_400,
        ..policy()
    };
    let mut st = State::new(&p, 0);
    for s in 0..20_000 {
        let rps = ((s * 7919) % 900) as f64;
        evaluate(&p, &mut st, &at(rps), s * S);
    }
    assert!(
        st.recent.len() <= (p.max - p.min + 1) as usize,
        "{}",
        st.recent.len()
    );
}

#[test]
fn bad_policies_name_the_field() {
    let bad = |f: fn(&mut Policy)| {
        let mut p = policy();
        f(&mut p);
        p.check().unwrap_err().0
    };
    assert_eq!(
        bad(|p| p.target_rps_per_replica = 0.0),
        "target_rps_per_replica"
    );
    assert_eq!(
        bad(|p| p.target_rps_per_replica = f64::NAN),
        "target_rps_per_replica"
    );
    assert_eq!(bad(|p| p.min = 9), "min");
    assert_eq!(bad(|p| p.max = 0), "max");
    assert_eq!(bad(|p| p.cooldown_s = 1_000_000), "cooldown_seconds");
    assert!(policy().check().is_ok());
}

#[test]
fn traces_parse_with_or_without_a_header() {
    let t = parse_trace("second,rps\n0,10\n5, 250.5\n\n# quiet\n9,0\n").unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(
        t[1],
        TracePoint {
            second: 5,
            rps: 250.5
        }
    );
    assert_eq!(parse_trace("0,1\n1,2").unwrap().len(), 2);
}

#[test]
fn bad_trace_lines_are_named() {
    let line = |text: &str| parse_trace(text).unwrap_err();
    assert_eq!(line("second,rps\n0,10\nx,3\n").line, 3);
    assert_eq!(line("0,10\n1,-4\n").line, 2);
    assert_eq!(line("0,10\n1\n").line, 2);
    assert_eq!(line("0,10\n1,2,3\n").line, 2);
    let e = line("0,10\n5,1\n5,2\n");
    assert_eq!(e.line, 3);
    assert!(e.message.contains("does not come after"), "{e}");
    assert_eq!(line("0,10\nsecond,rps\n").line, 2, "a header only first");
    assert_eq!(line("0,inf\n").line, 1);
    assert!(line("# nothing\n").message.contains("no"));
}

#[test]
fn simulation_replays_the_policy() {
    let p = Policy {
        target_rps_per_replica: 100.0,
        min: 1,
        max: 10,
        cooldown_s: 10,
        stabilisation_s: 60,
    };
    let trace = parse_trace("0,50\n10,450\n100,50\n300,50\n").unwrap();
    let (events, summary) = simulate(&p, &trace, 1);
    assert_eq!(summary.seconds, 301);
    assert_eq!(summary.peak_replicas, 5);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].second, 10);
    assert_eq!((events[0].decision.from, events[0].decision.to), (1, 5));
    // The dip at 100 s: down 60 s later.
    assert_eq!(events[1].second, 160);
    assert_eq!(events[1].decision.to, 1);
    // The second the load rose, one replica served 450 rps.
    assert_eq!(summary.under_provisioned_seconds, 1);
    assert_eq!(summary.events, 2);
}
