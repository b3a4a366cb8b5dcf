"""PNG line charts with Pillow (the toolkit's only imaging dependency; no matplotlib needed).

    plot.write_png('sweep.png', [plot.Chart('title', 'x', 'y', [plot.Series('label', [(x, y), ...])])])

draws the charts side by side: axes from 0 with round tick values, one coloured polyline with dot markers per
series, and a legend in the bottom-right corner.
"""
import collections
import math

from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

Series = collections.namedtuple('Series', ['label', 'points'])
Chart = collections.namedtuple('Chart', ['title', 'x_label', 'y_label', 'series'])

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]
CHART_SIZE = (460, 340)
MARGIN = dict(left=62, right=14, top=30, bottom=44)


def nice_ticks(maximum, count=5):
  """Round tick values from 0 to at least maximum (1, 2 or 5 times a power of ten apart)."""
  if maximum <= 0:
    return [0.0, 1.0]
  raw = maximum / count
  power = 10.0**math.floor(math.log10(raw))
  step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
  return [i * step for i in range(int(math.ceil(maximum / step - 1e-9)) + 1)]


def _label(value):
  return ('%.3g' % value) if value else '0'


def _font():
  try:
    return ImageFont.load_default(size=12)
  except TypeError:  # Pillow < 10.1: the fixed bitmap font
    return ImageFont.load_default()


def _draw_chart(draw, origin, chart, font):
  left, top = origin
  width, height = CHART_SIZE
  x0, y0 = left + MARGIN['left'], top + height - MARGIN['bottom']
  x1, y1 = left + width - MARGIN['right'], top + MARGIN['top']
  points = [p for s in chart.series for p in s.points]
  x_ticks = nice_ticks(max([p[0] for p in points] or [1]))
  y_ticks = nice_ticks(max([p[1] for p in points] or [1]))

  def to_pixel(x, y):
    return (x0 + (x1 - x0) * x / x_ticks[-1], y0 - (y0 - y1) * y / y_ticks[-1])

  draw.text((left + width / 2, top + 6), chart.title, fill='black', font=font, anchor='mt')
  for x in x_ticks:
    px, _ = to_pixel(x, 0)
    draw.line([(px, y0), (px, y1)], fill=(230, 230, 230))
    draw.text((px, y0 + 4), _label(x), fill='black', font=font, anchor='mt')
  for y in y_ticks:
    _, py = to_pixel(0, y)
    draw.line([(x0, py), (x1, py)], fill=(230, 230, 230))
    draw.text((x0 - 4, py), _label(y), fill='black', font=font, anchor='rm')
  draw.line([(x0, y1), (x0, y0), (x1, y0)], fill='black')
  draw.text(((x0 + x1) / 2, top + height - 14), chart.x_label, fill='black', font=font, anchor='mm')
  draw.text((left + 4, y1 - 16), chart.y_label, fill='black', font=font, anchor='lt')
  for index, series in enumerate(chart.series):
    color = COLORS[index % len(COLORS)]
    pixels = [to_pixel(x, y) for x, y in sorted(series.points)]
    if len(pixels) > 1:
      draw.line(pixels, fill=color, width=2)
    for px, py in pixels:
      draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
    # The legend sits in the bottom-right corner, one line per series.
    legend_y = y0 - 18 - 14 * (len(chart.series) - 1 - index)
    legend_x = x1 - 150
    draw.line([(legend_x, legend_y + 6), (legend_x + 16, legend_y + 6)], fill=color, width=2)
    draw.text((legend_x + 20, legend_y), series.label, fill='black', font=font, anchor='lt')


def write_png(path, charts, footer=None):
  """Draws charts side by side (and an optional footer line) into a PNG file."""
  footer_height = 18 if footer else 0
  image = Image.new('RGB', (CHART_SIZE[0] * len(charts), CHART_SIZE[1] + footer_height), 'white')
  draw = ImageDraw.Draw(image)
  font = _font()
  for index, chart in enumerate(charts):
    _draw_chart(draw, (index * CHART_SIZE[0], 0), chart, font)
  if footer:
    draw.text((6, CHART_SIZE[1] + 2), footer, fill=(90, 90, 90), font=font, anchor='lt')
  image.save(path, format='PNG', optimize=True)
  return path
