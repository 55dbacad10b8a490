"""A slice viewer that compares methods side by side: image | ground truth | method A | method B | ...

The data model (:class:`ViewerData`, in :mod:`xlstm_unet.viewer_data`, importable from here) is separate from the
widgets (:class:`SliceViewer`), so everything the viewer shows can be computed and tested without a browser. Dims,
slicing axes and colours: see :mod:`xlstm_unet.viewer_data`.

Example::

    from xlstm_unet.viewer import SliceViewer, ViewerData, demo_data
    viewer = SliceViewer(demo_data("3d"))          # synthetic demo
    viewer                                          # shows the widget in JupyterLab
    data = ViewerData.from_results("results/quickstart/Dataset901_Phantom2D", "data/nnUNet_raw/Dataset901_Phantom2D")
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from xlstm_unet.colors import label_colors
from xlstm_unet.viewer_data import SliceView, ViewAxis, ViewerCase, ViewerData, case_dice, prediction_dir

__all__ = [
    "ViewAxis",
    "ViewerCase",
    "SliceView",
    "ViewerData",
    "SliceViewer",
    "demo_data",
    "case_dice",
    "prediction_dir",
]


# ------------------------------------------------------------------------------------------------------------------
# Widgets
# ------------------------------------------------------------------------------------------------------------------


class SliceViewer:
    """ipywidgets viewer over :class:`ViewerData`.

    Widgets (public attributes, so that code and tests can drive them): ``case`` (Dropdown), ``axis``
    (ToggleButtons, hidden for 2D cases), ``slice`` (IntSlider, hidden for 2D cases), ``channel`` (Dropdown;
    "RGB" for colour images), ``opacity`` (FloatSlider), ``method_toggles`` (method -> ToggleButton), ``title``
    (HTML with the Dice of the case per shown method), ``image`` (the rendered panels as a PNG Image widget) and
    ``widget`` (the whole layout). Display the viewer itself or ``viewer.widget``.

    Args:
        data: the cases.
        methods: methods switched on at start (default all).
        opacity: initial overlay opacity.
        panel_size: inches per panel in the rendered PNG.
        dpi: resolution of the rendered PNG.
    """

    def __init__(self, data: ViewerData, methods: Sequence[str] | None = None, opacity: float = 0.5,
                 panel_size: float = 3.0, dpi: int = 80) -> None:
        import ipywidgets as w

        self.data = data
        self.panel_size = panel_size
        self.dpi = dpi
        on = set(methods) if methods is not None else set(data.methods)
        unknown = on - set(data.methods)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; data has {data.methods}")
        self._updating = False
        first = data.case_names[0]
        self.case = w.Dropdown(options=data.case_names, value=first, description="case")
        self.axis = w.ToggleButtons(options=[a.value for a in ViewAxis], value=ViewAxis.AXIAL.value,
                                    style={"button_width": "80px"})
        self.slice = w.IntSlider(min=0, max=0, value=0, description="slice", continuous_update=False)
        ch_opts: list[tuple[str, int | None]] = [(n, i) for i, n in enumerate(data.channel_names)]
        if data.is_rgb():
            ch_opts = [("RGB", None), *ch_opts]
        self.channel = w.Dropdown(options=ch_opts, value=data.default_channel(), description="channel")
        self.opacity = w.FloatSlider(min=0.0, max=1.0, step=0.05, value=opacity, description="opacity",
                                     continuous_update=False)
        self.method_toggles = {m: w.ToggleButton(value=m in on, description=m, tooltip=f"show {m}")
                               for m in data.methods}
        self.title = w.HTML()
        self.image = w.Image(format="png")
        self.widget = w.VBox([
            w.HBox([self.case, self.channel, self.opacity]),
            w.HBox([w.Label("axis"), self.axis, self.slice]),
            w.HBox([w.Label("methods"), *self.method_toggles.values()]),
            self.title,
            self.image,
        ])
        self._sync_slider(reset=True)
        for wid in (self.slice, self.channel, self.opacity, *self.method_toggles.values()):
            wid.observe(self._on_change, names="value")
        self.case.observe(self._on_case_or_axis, names="value")
        self.axis.observe(self._on_case_or_axis, names="value")
        self.refresh()

    # ------------------------------------------------------------------------------------------ state

    @property
    def shown_methods(self) -> list[str]:
        """Methods whose toggle is on, in data order."""
        return [m for m, t in self.method_toggles.items() if t.value]

    def current_view(self) -> SliceView:
        case = self.case.value
        c = self.data.case(case)
        if c.ndim == 2:
            return self.data.view(case, channel=self.channel.value)
        return self.data.view(case, self.axis.value, self.slice.value, self.channel.value)

    def current_slices(self) -> dict[str, np.ndarray]:
        """Raw 2D arrays on screen: ``image``, ``ground truth`` and each shown method's label slice."""
        return self.data.slices(self.case.value, self.current_view(), self.shown_methods)

    def current_panels(self) -> dict[str, np.ndarray]:
        """Displayed RGB panels on screen, each (H, W, 3) in [0, 1], keyed ``image``, ``ground truth``, methods."""
        return self.data.panels(self.case.value, self.current_view(), self.shown_methods, self.opacity.value)

    def current_dice(self) -> dict[str, float]:
        """Dice of the shown case for each shown method (whole case, not just the slice)."""
        return {m: self.data.dice(self.case.value, m) for m in self.shown_methods}

    # ------------------------------------------------------------------------------------------ events

    def _sync_slider(self, reset: bool) -> None:
        case = self.case.value
        is3d = self.data.case(case).ndim == 3
        hidden = {} if is3d else {"display": "none"}
        for wid in (self.axis, self.slice):
            wid.layout.display = hidden.get("display")
        if is3d:
            n = self.data.num_slices(case, self.axis.value)
            self._updating = True
            try:
                best = self.data.best_slice(case, self.axis.value)
                # widen before narrowing so that value stays valid while max changes
                self.slice.max = max(self.slice.max, n - 1)
                self.slice.value = best if reset or self.slice.value >= n else self.slice.value
                self.slice.max = n - 1
            finally:
                self._updating = False

    def _on_case_or_axis(self, _change: dict[str, Any]) -> None:
        self._sync_slider(reset=True)
        self.refresh()

    def _on_change(self, _change: dict[str, Any]) -> None:
        if not self._updating:
            self.refresh()

    def refresh(self) -> None:
        """Re-render the panels and the title from the widget values."""
        view = self.current_view()
        dice = self.current_dice()
        where = "" if view.axis is None else f" · {view.axis.value} slice {view.index}"
        parts = [f"{m}: Dice {'n/a' if math.isnan(d) else f'{d:.3f}'}" for m, d in dice.items()]
        self.title.value = f"<b>{view.case}</b>{where} — " + (" · ".join(parts) if parts else "no method shown")
        self.image.value = self.render_png()

    def render_png(self) -> bytes:
        """The current panels as one PNG (panel titles, Dice under each method, label legend)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch

        view = self.current_view()
        panels = self.current_panels()
        fig = Figure(figsize=(self.panel_size * len(panels), self.panel_size + 0.6), layout="constrained")
        FigureCanvasAgg(fig)
        axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
        dice = self.current_dice()
        for ax, (name, rgb) in zip(axes, panels.items()):
            ax.imshow(rgb, interpolation="nearest", aspect=view.aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=10)
            if name in dice:
                d = dice[name]
                ax.set_xlabel("Dice n/a" if math.isnan(d) else f"Dice {d:.3f}", fontsize=9)
        colours = label_colors(self.data.num_classes)
        handles = [Patch(color=colours[k], label=self.data.label_name(k)) for k in range(1, self.data.num_classes)]
        if handles:
            fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8,
                       frameon=False)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi)
        return buf.getvalue()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


# ------------------------------------------------------------------------------------------------------------------
# Synthetic demo
# ------------------------------------------------------------------------------------------------------------------


def demo_data(kind: str = "3d", num_cases: int = 2, size: int = 48, seed: int = 0) -> ViewerData:
    """SYNTHETIC demo cases for trying the viewer without results: not real data, not real predictions.

    Each case is a noisy image with two blob-shaped structures (labels 1 and 2). The "methods" are
    deterministic corruptions of the ground truth: ``synthetic_dilated`` (label maps grown by 2 voxels),
    ``synthetic_shifted`` (shifted by 3 voxels along the last axis) and ``synthetic_noisy`` (10 % of the
    structure voxels dropped).

    Args:
        kind: ``"2d"`` (cases (size, size), 1 channel) or ``"3d"`` (cases (size // 2, size, size), 2 channels).
        num_cases: number of cases.
        size: in-plane size.
        seed: random seed.
    """
    from scipy import ndimage

    if kind not in ("2d", "3d"):
        raise ValueError(f"kind must be '2d' or '3d', got {kind!r}")
    if num_cases < 1 or size < 16:
        raise ValueError(f"need num_cases >= 1 and size >= 16, got num_cases={num_cases}, size={size}")
    rng = np.random.default_rng(seed)
    shape = (size, size) if kind == "2d" else (size // 2, size, size)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))  # (ndim, *spatial)
    images, gts, preds = {}, {}, {"synthetic_dilated": {}, "synthetic_shifted": {}, "synthetic_noisy": {}}
    for i in range(num_cases):
        name = f"synthetic_{i:03d}"
        gt = np.zeros(shape, dtype=np.int64)
        for label in (1, 2):
            centre = np.array([rng.uniform(0.3, 0.7) * n for n in shape])
            radii = np.array([rng.uniform(0.12, 0.22) * n for n in shape])
            d = (((grid - centre.reshape(-1, *([1] * len(shape)))) / radii.reshape(-1, *([1] * len(shape)))) ** 2)
            gt[(d.sum(0) <= 1.0) & (gt == 0)] = label
        chans = []
        for ch in range(1 if kind == "2d" else 2):
            base = 0.2 + 0.5 * (gt == 1) + (0.3 + 0.2 * ch) * (gt == 2)
            chans.append(ndimage.gaussian_filter(base + rng.normal(0, 0.08, shape), 1.0).astype(np.float32))
        images[name] = np.stack(chans)
        gts[name] = gt
        dil = np.zeros_like(gt)
        for label in (1, 2):
            dil[ndimage.binary_dilation(gt == label, iterations=2) & (dil == 0)] = label
        preds["synthetic_dilated"][name] = dil
        preds["synthetic_shifted"][name] = np.roll(gt, 3, axis=-1)
        noisy = gt.copy()
        noisy[(gt > 0) & (rng.random(shape) < 0.10)] = 0
        preds["synthetic_noisy"][name] = noisy
    chan_names = ["synthetic channel 0"] if kind == "2d" else ["synthetic channel 0", "synthetic channel 1"]
    return ViewerData.from_arrays(
        images, gts, preds, labels={0: "background", 1: "structure A", 2: "structure B"},
        channel_names=chan_names, spacing={n: (2.0, 1.0, 1.0) if kind == "3d" else (1.0, 1.0) for n in images},
        source=f"SYNTHETIC demo ({kind}, seed {seed})",
    )
