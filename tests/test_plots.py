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
