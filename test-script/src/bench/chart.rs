//! Charts of benchmark results, drawn to SVG with `plotters`: one line per series over
//! categorical x values (connection counts, broadcast configurations), latency on a log scale.
//!
//! The input is tab-separated `series<TAB>x<TAB>value` rows (`#` starts a comment), in the
//! order the x values should appear; `scripts/bench-charts.sh` writes them from the medians of
//! the runs. Text is laid out with a TrueType font read at run time (DejaVu Sans on Debian),
//! so no font library is linked.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// One value of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub series: String,
    pub x: String,
    pub value: f64,
}

/// Where and how to draw.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub out: PathBuf,
}

/// Reads `series<TAB>x<TAB>value` rows.
pub fn parse(text: &str) -> anyhow::Result<Vec<Point>> {
    let mut points = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [series, x, value] = fields[..] else {
            bail!(
                "line {}: expected series<TAB>x<TAB>value, got `{line}`",
                n + 1
            );
        };
        let value: f64 = value
            .parse()
            .with_context(|| format!("line {}: `{value}` is not a number", n + 1))?;
        points.push(Point {
            series: series.to_owned(),
            x: x.to_owned(),
            value,
        });
    }
    Ok(points)
}

/// Makes `family` ("sans-serif") lay out with the TrueType font at `path`.
pub fn load_font(path: &Path) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read the font {}", path.display()))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a usable TrueType font", path.display()))
}

/// Distinct values in order of first appearance.
fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen: Vec<&str> = Vec::new();
    for v in values {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// Draws `points` to `chart.out` as SVG: one coloured line with markers per series.
pub fn render(points: &[Point], chart: &Chart) -> anyhow::Result<()> {
    let xs = distinct(points.iter().map(|p| p.x.as_str()));
    let series = distinct(points.iter().map(|p| p.series.as_str()));
    let positive = points.iter().map(|p| p.value).filter(|v| *v > 0.0);
    let low = positive.clone().fold(f64::INFINITY, f64::min);
    let high = positive.fold(0.0, f64::max);
    if xs.is_empty() || high <= 0.0 {
        bail!("no positive values to draw");
    }
    let root = SVGBackend::new(&chart.out, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut c = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(72)
        .build_cartesian_2d(
            -0.5f64..xs.len() as f64 - 0.5,
            // Whole decades, so every decade gets its tick labels.
            (10f64.powf(low.log10().floor())..10f64.powf(high.log10().ceil())).log_scale(),
        )
        .map_err(plot_error)?;
    let label_of = |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 0.01 && i >= 0.0 {
            xs.get(i as usize)
                .map(|s| s.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    c.configure_mesh()
        .x_labels(xs.len() * 2 + 1)
        .x_label_formatter(&label_of)
        .y_label_formatter(&|v| {
            format!("{v:.3}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_owned()
        })
        .disable_x_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_error)?;
    for (i, name) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let line: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.series == *name && p.value > 0.0)
            .filter_map(|p| {
                let x = xs.iter().position(|x| *x == p.x)?;
                Some((x as f64, p.value))
            })
            .collect();
        c.draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
        c.draw_series(line.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(plot_error)?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_and_bad_rows_are_refused() {
        let p = parse("# comment\nFAST p50\t1000\t0.2\nFAST p50\t4000\t0.3\n").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].x, "4000");
        assert!(parse("a\tb\n").is_err());
        assert!(parse("a\tb\tc\n").is_err());
    }

    #[test]
    fn distinct_keeps_first_appearance_order() {
        assert_eq!(distinct(["b", "a", "b", "c"].into_iter()), ["b", "a", "c"]);
    }
}
