//! `yorker-plot`: turns the JSON lines of scripts/bench-fanout.sh into the markdown tables
//! (with the ratios the goals are stated in) and PNG charts of docs/BENCHMARKS.md.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use plotters::prelude::*;
use serde_json::Value;

/// Tables and plots from fan-out benchmark results.
#[derive(Debug, Parser)]
struct Args {
    /// JSON lines written by scripts/bench-fanout.sh.
    #[arg(long)]
    input: PathBuf,
    /// Where the PNG files go.
    #[arg(long, default_value = "bench-results")]
    out_dir: PathBuf,
    /// A TrueType font for the charts' text.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
}

const SERVERS: [&str; 8] = [
    "floor-write",
    "floor-uring",
    "floor-gather",
    "yorker",
    "mosquitto",
    "nats",
    "redis",
    "yorker-2core",
];

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut v = v;
    for p in path {
        v = v.get(*p)?;
    }
    v.as_f64()
}

fn ms(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.input)?;
    let rows: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let get = |server: &str, phase: &str, subs: u64, size: u64| -> Option<&Value> {
        rows.iter().find(|r| {
            r["server"] == server
                && r["phase"] == phase
                && r["subs"].as_u64() == Some(subs)
                && r["size"].as_u64() == Some(size)
                && r.get("error").is_none()
        })
    };
    let mut ns: Vec<u64> = rows
        .iter()
        .filter(|r| r["phase"] == "burst")
        .filter_map(|r| r["subs"].as_u64())
        .collect();
    ns.sort_unstable();
    ns.dedup();
    let mut sizes: Vec<u64> = rows
        .iter()
        .filter(|r| r["phase"] == "burst")
        .filter_map(|r| r["size"].as_u64())
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let present: Vec<&str> = SERVERS
        .iter()
        .copied()
        .filter(|s| rows.iter().any(|r| r["server"] == *s))
        .collect();

    println!("## Burst mode: fan-out completion and fairness (ms), server CPU per delivery (us)\n");
    println!("| server | payload | N | completion p50 | completion p99 | spread p99 | deliveries/s | server us/delivery | lost |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in &present {
        for &size in &sizes {
            for &n in &ns {
                if let Some(r) = get(s, "burst", n, size) {
                    println!(
                        "| {s} | {size} | {n} | {} | {} | {} | {:.0} | {} | {} |",
                        ms(f(r, &["completion", "p50_ms"])),
                        ms(f(r, &["completion", "p99_ms"])),
                        ms(f(r, &["spread", "p99_ms"])),
                        f(r, &["deliveries_per_s"]).unwrap_or(0.0),
                        f(r, &["server_cpu_us_per_delivery"])
                            .map(|v| format!("{v:.2}"))
                            .unwrap_or("-".into()),
                        r["lost"],
                    );
                }
            }
        }
    }

    if let Some(&n) = ns.last() {
        let size = sizes.first().copied().unwrap_or(64);
        let y = get("yorker", "burst", n, size);
        println!("\n## Ratios at N = {n}, {size} B, burst mode (same run)\n");
        println!("| yorker vs | completion p50 | server CPU per delivery | spread p99 | deliveries/s (peer / yorker inverted: yorker / peer) |");
        println!("|---|---:|---:|---:|---:|");
        for other in [
            "floor-uring",
            "floor-gather",
            "floor-write",
            "redis",
            "nats",
            "mosquitto",
        ] {
            let o = get(other, "burst", n, size);
            println!(
                "| {other} | {} | {} | {} | {} |",
                ratio(
                    y.and_then(|y| f(y, &["completion", "p50_ms"])),
                    o.and_then(|o| f(o, &["completion", "p50_ms"]))
                ),
                ratio(
                    y.and_then(|y| f(y, &["server_cpu_us_per_delivery"])),
                    o.and_then(|o| f(o, &["server_cpu_us_per_delivery"]))
                ),
                ratio(
                    y.and_then(|y| f(y, &["spread", "p99_ms"])),
                    o.and_then(|o| f(o, &["spread", "p99_ms"]))
                ),
                ratio(
                    y.and_then(|y| f(y, &["deliveries_per_s"])),
                    o.and_then(|o| f(o, &["deliveries_per_s"]))
                ),
            );
        }
        println!("\n(completion, CPU and spread: lower is better, so < 1.00x favours yorker; deliveries/s: higher is better.)");
    }

    // Rate mode: per server and N, every offered rate; "sustained" = nothing lost, p99 < 50 ms.
    let mut rate_rows: BTreeMap<(String, u64), Vec<&Value>> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r["phase"] == "rate" && r.get("error").is_none())
    {
        rate_rows
            .entry((
                r["server"].as_str().unwrap_or("?").to_string(),
                r["subs"].as_u64().unwrap_or(0),
            ))
            .or_default()
            .push(r);
    }
    if !rate_rows.is_empty() {
        println!("\n## Rate mode, 64 B: offered deliveries/s, p99 latency, loss, server CPU per delivery\n");
        println!("| server | N | offered deliveries/s | achieved deliveries/s | p99 ms | lost | server us/delivery | sustained |");
        println!("|---|---:|---:|---:|---:|---:|---:|---|");
        for s in &present {
            for ((server, n), runs) in &rate_rows {
                if server != s {
                    continue;
                }
                for r in runs {
                    let offered = r["rate"].as_f64().unwrap_or(0.0) * *n as f64;
                    let p99 = f(r, &["latency", "p99_ms"]);
                    let ok = r["ok"].as_bool() == Some(true) && p99.is_some_and(|p| p < 50.0);
                    println!(
                        "| {server} | {n} | {offered:.0} | {:.0} | {} | {} | {} | {} |",
                        f(r, &["deliveries_per_s"]).unwrap_or(0.0),
                        ms(p99),
                        r["lost"],
                        f(r, &["server_cpu_us_per_delivery"])
                            .map(|v| format!("{v:.2}"))
                            .unwrap_or("-".into()),
                        if ok { "yes" } else { "no" }
                    );
                }
            }
        }
    }

    let rss: Vec<&Value> = rows.iter().filter(|r| r["phase"] == "rss").collect();
    if !rss.is_empty() {
        println!("\n## Extra server RSS per idle subscribed connection\n");
        println!("| server | connections | bytes per connection |");
        println!("|---|---:|---:|");
        for r in rss {
            println!(
                "| {} | {} | {} |",
                r["server"].as_str().unwrap_or("?"),
                r["connections"],
                r["rss_bytes_per_conn"]
            );
        }
    }

    // Charts.
    let font: &'static [u8] = Box::leak(std::fs::read(&args.font)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "bad font")?;
    let size = sizes.first().copied().unwrap_or(64);
    let png = args.out_dir.join("fanout-completion.png");
    {
        let root = BitMapBackend::new(&png, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let ymax = present
            .iter()
            .flat_map(|s| {
                ns.iter().filter_map(|&n| {
                    get(s, "burst", n, size).and_then(|r| f(r, &["completion", "p50_ms"]))
                })
            })
            .fold(1.0f64, f64::max);
        let xmax = *ns.last().unwrap_or(&1000) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Burst fan-out completion p50 vs subscribers ({size} B, server on 1 core)"),
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax * 1.05, 0f64..ymax * 1.15)?;
        chart
            .configure_mesh()
            .x_desc("subscribers")
            .y_desc("ms (publish to last subscriber)")
            .draw()?;
        for (i, s) in present.iter().enumerate() {
            let pts: Vec<(f64, f64)> = ns
                .iter()
                .filter_map(|&n| {
                    get(s, "burst", n, size)
                        .and_then(|r| f(r, &["completion", "p50_ms"]))
                        .map(|v| (n as f64, v))
                })
                .collect();
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(*s)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    if let Some(&n) = ns.last() {
        let png = args.out_dir.join("fanout-deliveries.png");
        let root = BitMapBackend::new(&png, (900, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let vals: Vec<(&str, f64)> = present
            .iter()
            .filter_map(|s| {
                get(s, "burst", n, size)
                    .and_then(|r| f(r, &["deliveries_per_s"]))
                    .map(|v| (*s, v))
            })
            .collect();
        let ymax = vals.iter().map(|v| v.1).fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Deliveries per second, burst mode, N = {n}, {size} B"),
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d((0..vals.len()).into_segmented(), 0f64..ymax * 1.15)?;
        let labels: Vec<String> = vals.iter().map(|v| v.0.to_string()).collect();
        chart
            .configure_mesh()
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_desc("deliveries/s")
            .draw()?;
        chart.draw_series(vals.iter().enumerate().map(|(i, v)| {
            let c = Palette99::pick(present.iter().position(|s| *s == v.0).unwrap_or(i)).to_rgba();
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), v.1),
                ],
                c.filled(),
            )
        }))?;
        root.present()?;
    }
    eprintln!(
        "charts: {}/fanout-completion.png, fanout-deliveries.png",
        args.out_dir.display()
    );
    Ok(())
}
