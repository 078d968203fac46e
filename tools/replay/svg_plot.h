// A dependency-free SVG line chart: hit rate (y, 0..1) against cache capacity (x).
// Used by `moe-replay --sweep --svg FILE`. Pure function; thread-safe.
#pragma once

#include <string>
#include <vector>

namespace moe {

struct PlotSeries {
  std::string label;
  std::vector<double> x;
  std::vector<double> y;
  bool dashed = false;  // e.g. the Belady bound
};

// Returns a complete SVG document.
std::string RenderLinePlotSvg(const std::string& title, const std::string& x_label,
                              const std::string& y_label, const std::vector<PlotSeries>& series);

}  // namespace moe
