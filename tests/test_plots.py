"""Figures: written as PNG, epochs as whole numbers, legends under the axes."""

from hw2jax import plots


def test_training_curves_have_integer_epochs_and_the_running_mean(tmp_path):
  history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_accuracy": 0.5}
             for e in (1, 2, 3)]
  seen = {}
  path = plots.plot_history(history, tmp_path / "curves.png", title="t",
                            panels=(("loss", ("train_loss", "val_loss")),),
                            running_mean_of="train_loss")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with plots.figure(tmp_path / "f.png", dpi=50) as fig:
    ax = fig.subplots()
    ax.plot([1, 2, 3], [1, 2, 3], label="a")
    plots.epoch_axis(ax)
    plots.legend_below(ax)
    fig.canvas.draw()
    seen["ticks"] = [t for t in ax.get_xticks() if 1 <= t <= 3]
  assert all(float(t).is_integer() for t in seen["ticks"])
  assert plots.running_mean([1.0, 3.0, 5.0]) == [1.0, 2.0, 3.0]


def _drawn_history(tmp_path, history):
  """The axes of plot_history's figure, drawn, for looking at ticks and lines."""
  with plots.figure(tmp_path / "curves.png", dpi=50, figsize=(11, 5)) as fig:
    plots.draw_history(fig, history, title="t", note=None, running_mean_of="train_loss",
                        panels=(("accuracy", ("val_accuracy",)),
                                ("loss", ("train_loss", "val_loss"))))
    fig.canvas.draw()
    return fig.axes


def _visible(line) -> bool:
  """A line shows when it has a marker, or a line style and two points to join."""
  return line.get_marker() not in ("None", None, "") or (
      line.get_linestyle() not in ("None", "") and len(line.get_xdata()) >= 2)


def test_a_one_epoch_run_has_one_integer_tick_and_shows_every_curve_in_its_legend(tmp_path):
  history = [{"epoch": 1, "train_loss": 1.79123, "val_loss": 1.7905, "val_accuracy": 0.18}]
  for ax in _drawn_history(tmp_path, history):
    low, high = ax.get_xlim()
    assert [t for t in ax.get_xticks() if low <= t <= high] == [1]
    lines = {line.get_label(): line for line in ax.get_lines()}
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels and all(_visible(lines[label]) for label in labels), labels


def test_axes_write_numbers_out_without_an_offset(tmp_path):
  history = [{"epoch": e, "train_loss": 1.7917 - 1e-5 * e, "val_loss": 1.7916 - 2e-5 * e,
              "val_accuracy": 0.1843 + 1e-7 * e} for e in range(1, 6)]
  for ax in _drawn_history(tmp_path, history):
    for axis in (ax.xaxis, ax.yaxis):
      assert axis.get_offset_text().get_text() == ""
    assert all(t.get_text().startswith(("0.18", "1.79")) for t in ax.get_yticklabels())
