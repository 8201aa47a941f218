//! `linker-bench-chart`: draws a benchmark chart to SVG from `series<TAB>x<TAB>value` rows
//! (see `test_script::bench::chart`), e.g. the medians `scripts/bench-charts.sh` collects.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use test_script::bench::chart::{self, Chart};

#[derive(Parser)]
#[command(
    name = "linker-bench-chart",
    about = "Draws a benchmark chart to SVG",
    version
)]
struct Args {
    /// Rows `series<TAB>x<TAB>value`; `-` reads stdin.
    input: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    title: String,
    #[arg(long, default_value = "connections")]
    x_label: String,
    #[arg(long, default_value = "latency (ms, log scale)")]
    y_label: String,
    /// TrueType font for the text.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
}

fn run(a: Args) -> anyhow::Result<()> {
    let text = if a.input.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&a.input)?
    };
    let points = chart::parse(&text)?;
    chart::load_font(&a.font)?;
    chart::render(
        &points,
        &Chart {
            title: a.title,
            x_label: a.x_label,
            y_label: a.y_label,
            out: a.out,
        },
    )
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("linker-bench-chart: {e:#}");
            ExitCode::FAILURE
        }
    }
}
