//! Issue 5 acceptance 3 (time-compressed): the trends store stays bounded
//! over a simulated year and a half, and the year view still answers.

use tern::engine::trends::{Cf, Sample, Trends};

#[test]
fn trends_store_stays_flat_over_a_simulated_year() {
    let d = tempfile::tempdir().unwrap();
    let tr = Trends::open(d.path(), 10).unwrap();
    // One sample every simulated hour for 540 days (the raw tier sees
    // 1/360 of its real density; every tier rolls and expires as in a real
    // run, since all decisions follow the time passed in).
    let t0: i64 = 1_800_000_000 / 86_400 * 86_400;
    let step = 3600;
    let bounds: Vec<(&str, usize)> = tr
        .tiers()
        .iter()
        .map(|t| (t.name, (t.retention_s / t.epoch_s) as usize + 2))
        .collect();
    let mut sizes = Vec::new();
    let days = 540;
    for i in 0..(days * 86_400 / step) {
        let t = t0 + i * step;
        let v = (i % 48) as f64;
        let samples = [
            Sample::new("pair_rpo_seconds", &[("pair", "a"), ("host", "s1")], v),
            Sample::new(
                "pair_rpo_seconds",
                &[("pair", "b"), ("host", "s1")],
                v * 2.0,
            ),
            Sample::new(
                "pair_change_bytes_per_s",
                &[("pair", "a"), ("host", "s1")],
                1e6 + v,
            ),
            Sample::new("host_cpu_percent", &[("host", "s1")], v),
        ];
        tr.record(t, &samples).unwrap();
        if i % (86_400 / step) == 0 {
            for ((name, n), (bn, max)) in tr.epoch_counts().into_iter().zip(&bounds) {
                assert_eq!(name, *bn);
                assert!(
                    n <= *max,
                    "day {}: tier {name} has {n} epochs (bound {max})",
                    i * step / 86_400
                );
            }
        }
        if i % (30 * 86_400 / step) == 0 {
            sizes.push((i * step / 86_400, tr.disk_bytes()));
        }
    }
    // Past the longest retention (400 days) nothing grows any more.
    let at = |day: i64| sizes.iter().find(|(d, _)| *d >= day).unwrap().1;
    let (s420, s_end) = (at(420), sizes.last().unwrap().1);
    assert!(
        s_end as f64 <= 1.25 * s420 as f64,
        "store grew from {s420} bytes (day 420) to {s_end} (day {}): {sizes:?}",
        days
    );
    // The year view answers with hourly points over the last 400 days only.
    let end = t0 + days * 86_400;
    let year = tr.tier(Some("year"), end - 400 * 86_400, end).unwrap();
    let f = tr
        .fetch(
            "pair_rpo_seconds",
            &[("pair".to_owned(), "a".to_owned())],
            end - 500 * 86_400,
            end,
            year,
            Cf::Max,
        )
        .unwrap();
    let pts = &f.series[0].points;
    assert!(
        pts.first().unwrap().0 >= end - 451 * 86_400,
        "expired hours are gone"
    );
    assert!(
        pts.len() > 400 * 24 - 2 * 24 * 50,
        "{} hourly points",
        pts.len()
    );
    assert!(pts.iter().all(|p| p.1 <= 47.0));
    println!("trends store size by day: {sizes:?}");
}
