#include "tools/replay/svg_plot.h"

#include <algorithm>
#include <cmath>

#include "fmt/format.h"

namespace moe {
namespace {

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

constexpr const char* kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                   "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};

}  // namespace

std::string RenderLinePlotSvg(const std::string& title, const std::string& x_label,
                              const std::string& y_label, const std::vector<PlotSeries>& series) {
  const double width = 720, height = 440;
  const double left = 70, right = 170, top = 40, bottom = 60;
  const double pw = width - left - right, ph = height - top - bottom;
  double xmin = 0, xmax = 1;
  bool first = true;
  for (const PlotSeries& s : series) {
    for (double x : s.x) {
      xmin = first ? x : std::min(xmin, x);
      xmax = first ? x : std::max(xmax, x);
      first = false;
    }
  }
  if (xmax <= xmin) xmax = xmin + 1;
  auto px = [&](double x) { return left + (x - xmin) / (xmax - xmin) * pw; };
  auto py = [&](double y) { return top + (1.0 - std::clamp(y, 0.0, 1.0)) * ph; };

  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
      width, height, left + pw / 2, Escape(title));
  // Grid and y ticks.
  for (int i = 0; i <= 10; i += 2) {
    const double y = i / 10.0;
    svg += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#ddd\"/>\n"
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{:.1f}</text>\n",
        left, py(y), left + pw, py(y), left - 6, py(y) + 4, y);
  }
  // x ticks at each distinct x.
  std::vector<double> xs;
  for (const PlotSeries& s : series) xs.insert(xs.end(), s.x.begin(), s.x.end());
  std::sort(xs.begin(), xs.end());
  xs.erase(std::unique(xs.begin(), xs.end()), xs.end());
  for (double x : xs) {
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" stroke=\"#eee\"/>\n"
        "<text x=\"{0:.1f}\" y=\"{3:.1f}\" text-anchor=\"middle\">{4}</text>\n",
        px(x), top, top + ph, top + ph + 16, x);
  }
  svg += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n"
      "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n"
      "<text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">{}</text>\n",
      left, top, pw, ph, left + pw / 2, height - 18, Escape(x_label), top + ph / 2, top + ph / 2,
      Escape(y_label));
  for (size_t i = 0; i < series.size(); ++i) {
    const PlotSeries& s = series[i];
    const char* color = kColors[i % std::size(kColors)];
    std::string points;
    for (size_t j = 0; j < s.x.size() && j < s.y.size(); ++j) {
      points += fmt::format("{:.1f},{:.1f} ", px(s.x[j]), py(s.y[j]));
    }
    svg +=
        fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{} points=\"{}\"/>\n",
                    color, s.dashed ? " stroke-dasharray=\"6 4\"" : "", points);
    for (size_t j = 0; j < s.x.size() && j < s.y.size(); ++j) {
      svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", px(s.x[j]),
                         py(s.y[j]), color);
    }
    const double ly = top + 14 + 20.0 * static_cast<double>(i);
    svg += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" "
        "stroke-width=\"2\"{}/>\n<text x=\"{:.1f}\" y=\"{:.1f}\">{}</text>\n",
        left + pw + 12, ly, left + pw + 36, ly, color, s.dashed ? " stroke-dasharray=\"6 4\"" : "",
        left + pw + 42, ly + 4, Escape(s.label));
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace moe
