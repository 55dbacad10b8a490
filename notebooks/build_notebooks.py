"""Write every notebook of ``notebooks/`` (run: ``.venv/bin/python notebooks/build_notebooks.py [--out DIR]``).

The experiment notebooks come from one template and are thin: a ``parameters`` cell (one ``name: type = default
# help`` per line, so ``papermill --help-notebook`` documents them), a call to
:func:`xlstm_unet.experiment.run_experiment`, a results table in the paper's format and a Fig. 2 panel; the report
notebooks and the slice viewer demo follow the same form. Edit this file, not the generated notebooks, and re-run
it (a test checks that the committed notebooks are what it writes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

#: Tables 2 and 3: every row of the paper (SegMamba is Table 2's row printed "SegFormer") and our other 3D methods.
METHODS_3D = ["nnunet", "segresnet", "uxnet", "mednext", "unetr", "swinunetr", "swinunetr_v2", "segmamba",
              "segformer3d", "umamba_bot", "xlstm_bot", "xlstm_enc"]

# name, dataset, configuration, title, description, default data_dir, methods, epochs, iterations, convert options
EXPERIMENTS = [
    ("10_kvasir_seg", "kvasir_seg", "2d", "Kvasir-SEG polyps (real, 2D RGB)",
     "200 real colonoscopy frames from `$XLSTM_UNET_SHARED_DATA/kvasir_seg`, binary polyp masks.", "",
     ["nnunet", "xlstm_bot", "xlstm_enc"], 20, 50, {}),
    ("11_ctc_nuclei", "ctc_nuclei", "2d", "Cell Tracking Challenge nuclei (real, 2D, cell F1)",
     "10 real fluorescence frames (GOWT1, HeLa) from `$XLSTM_UNET_SHARED_DATA/ctc_nuclei`, trained as 3 classes "
     "(background / interior / boundary) and scored by instance F1 as in the paper's microscopy protocol.", "",
     ["nnunet", "xlstm_bot", "xlstm_enc"], 20, 50, {}),
    ("12_pgbm_brain_mri", "pgbm_brain_mri", "3d_fullres", "PGBM brain-tumour MRI (real, 3D, four modalities)",
     "5 real studies (3 patients) from `$XLSTM_UNET_SHARED_DATA/pgbm_brain_mri`; train/test split by patient.", "",
     ["nnunet", "xlstm_bot", "xlstm_enc"], 10, 25, {}),
    ("20_abdomen_mri_2d", "amos_mri", "2d_p320x320", "Abdomen MRI, 2D (paper Table 1)",
     "AMOS 2022 MRI, 13 organs, U-Mamba's 60/50 split, the paper's 320 x 320 patches; DSC and NSD with the organ "
     "tolerance table.",
     "data/raw/amos22", ["nnunet", "resenc_m", "segresnet", "unetr", "swinunetr", "umamba_bot", "umamba_enc",
                         "xlstm_bot", "xlstm_enc"], 1000, 250, {}),
    ("21_endoscopy", "endovis17", "2d", "Endoscopy instruments, 2D (paper Table 1)",
     "EndoVis 2017, 7 instrument classes, the official 1800/1200 split by video, frames cropped to 384x640.",
     "data/raw/endovis17", ["nnunet", "resenc_m", "segresnet", "unetr", "swinunetr", "umamba_bot", "umamba_enc",
                            "xlstm_bot", "xlstm_enc"], 1000, 250, {}),
    ("22_microscopy_cells", "neurips_cells", "2d", "Microscopy cells, 2D (paper Table 1)",
     "NeurIPS 2022 cell segmentation: 3-class training targets, instance F1 at IoU 0.5.",
     "data/raw/neurips_cells", ["nnunet", "resenc_m", "segresnet", "unetr", "swinunetr", "umamba_bot",
                                "umamba_enc", "xlstm_bot", "xlstm_enc"], 1000, 250, {}),
    ("23_brats_3d", "brats23", "3d_fullres", "BraTS 2023, 3D (paper Table 2)",
     "BraTS 2023 glioma, four modalities, region-based training (WT/TC/ET), Dice and HD95 (SegMamba protocol).",
     "data/raw/brats23", METHODS_3D, 1000, 250, {}),
    ("24_abdomen_mri_3d", "amos_mri", "3d_fullres_p48x160x224", "Abdomen MRI, 3D (paper Table 3)",
     "AMOS 2022 MRI, 13 organs, 3D, the paper's 48 x 160 x 224 patches; DSC and NSD.",
     "data/raw/amos22", METHODS_3D, 1000, 250, {}),
]


def _params(dataset, configuration, data_dir, methods, epochs, iterations, convert_options, output_dir,
            figure_dir, extra="", fold="0"):
    return (
        f'dataset: str = "{dataset}"  # converter name (xlstm-unet convert --help)\n'
        f'data_dir: str = "{data_dir}"  # raw data folder (empty: the converter default)\n'
        f"methods: list = {methods!r}  # method names (xlstm_unet.nnunet.METHODS)\n"
        f'configuration: str = "{configuration}"  # nnU-Net configuration\n'
        f"fold: str = \"{fold}\"  # nnU-Net fold: 0-4, or all (every training case, as the paper's tables)\n"
        "folds: list = []  # several folds, each trained and scored on the test split (empty: fold); folds.csv\n"
        f"epochs: int = {epochs}  # epochs per method (nnU-Net's full budget: 1000)\n"
        f"iterations_per_epoch: int = {iterations}  # iterations per epoch (nnU-Net's full budget: 250)\n"
        "batch_size: int = 0  # batch size (0: the plans')\n"
        'recipe: str = "paper"  # paper (AdamW) or official (SGD)\n'
        "amp: bool = True  # mixed precision on CUDA (False: float32, the _noamp trainers)\n"
        'device: str = "cpu"  # cpu or cuda\n'
        "num_gpus: int = 1  # GPUs per training (nnU-Net's DDP on CUDA; the batch is split across them)\n"
        "seed: int = 0  # split seed (and the training seed when seeds is empty)\n"
        "seeds: list = []  # training seeds, one training run each (empty: [seed])\n"
        "seeds_by_method: dict = {}  # per-method training seeds, overriding seeds\n"
        "mirroring: bool = True  # nnU-Net's test-time mirroring when predicting\n"
        f'output_dir: str = "{output_dir}"  # results root, relative to the repository\n'
        f'figure_dir: str = "{figure_dir}"  # tables and figures, relative to the repository\n'
        f"convert_options: dict = {convert_options!r}  # converter options (max_cases, n_train, ...)\n"
        f"{extra}"
        "force: bool = False  # redo steps whose outputs exist")


SETUP = (
    "import logging\n"
    "from xlstm_unet.experiment import run_experiment, validate_experiment_args\n"
    "from xlstm_unet.paths import REPO_ROOT\n\n"
    'logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")\n'
    "validate_experiment_args(dataset, methods, source=data_dir or None, device=device,\n"
    "                         configuration=configuration)\n"
    "fig_dir = REPO_ROOT / figure_dir\n"
    "fig_dir.mkdir(parents=True, exist_ok=True)")

RUN = (
    "res = run_experiment(dataset, methods, source=data_dir or None, convert_options=convert_options,\n"
    "                     configuration=configuration, fold=fold, folds=folds or None, epochs=epochs,\n"
    "                     iterations=iterations_per_epoch, batch_size=batch_size or None, recipe=recipe, amp=amp,\n"
    "                     device=device, num_gpus=num_gpus, seed=seed,\n"
    "                     seeds=seeds or None, seeds_by_method=seeds_by_method, output_dir=output_dir,\n"
    "                     force=force, mirroring=mirroring)\n"
    "res.results_dir")

CURVES = (
    "from xlstm_unet.study import plot_training_curves\n\n"
    'plot_training_curves(res.results_dir, methods, fig_dir / "training_curves")')

TABLE = (
    "from xlstm_unet.figures import results_table, save_table\n"
    "from xlstm_unet.paper_results import match_dataset\n\n"
    'reference = "xlstm_enc" if "xlstm_enc" in methods else None\n'
    "table = results_table(res.results_dir.parent, {res.dataset: match_dataset(res.dataset, configuration)}, methods,\n"
    "                      res.table_metrics(), paper={paper}, reference=reference)\n"
    'save_table(table, fig_dir / "results")\n'
    "table")

FIG2 = (
    "from xlstm_unet.figures import fig2_panel\n"
    "from xlstm_unet.viewer import ViewerData\n\n"
    "data = ViewerData.from_results(res.results_dir, res.raw_dir, methods=methods, max_cases=3)\n"
    'panel = fig2_panel(data, fig_dir / "fig2_panel", methods=methods)\n'
    "panel.figure")


def experiment_notebook(title: str, description: str, params: str, paper: bool, synthetic: bool = False):
    note = ("The default dataset is **SYNTHETIC** (generated offline): it exercises the pipeline and says nothing "
            "about real performance." if synthetic else
            "Budgets below 1000 x 250 are short runs: the trainer name and results folder say so "
            "(e.g. `nnUNetTrainerXLSTMEnc_20ep_50it`).")
    cells = [
        new_markdown_cell(f"# {title}\n\n{description}\n\n{note}\n\n"
                          "Steps: convert → nnU-Net plan & preprocess → train each method → predict the test split → "
                          "evaluate → results table and Fig. 2 panel. Run headless with papermill or "
                          "`xlstm-unet run-all`."),
        new_code_cell(params, metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP),
        new_markdown_cell("## Convert, plan, train, predict, evaluate\nnnU-Net prints one block per epoch."),
        new_code_cell(RUN),
        new_markdown_cell("## Training curves\nPer method and training seed: training and validation loss, and "
                          "nnU-Net's pseudo Dice on the validation batches."),
        new_code_cell(CURVES),
        new_markdown_cell("## Results (mean ± std over test cases"
                          + (", the paper's number beside each cell" if paper else "")
                          + ", paired Wilcoxon p-value against xLSTM-UNet Enc)"),
        new_code_cell(TABLE.replace("{paper}", str(paper))),
        new_markdown_cell("## Fig. 2-style panel: image | ground truth | each method"),
        new_code_cell(FIG2),
    ]
    return new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})


def _nb(cells):
    return new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})


def results_tables_notebook():
    return _nb([
        new_markdown_cell(
            "# Results tables in the paper's format\n\n"
            "Tables 1-3 of the paper (and ours on the real sample sets) from the experiment notebooks' results files: "
            "mean ± std over test cases, the paper's reported number beside each measured cell, and the paired "
            "Wilcoxon p-value against xLSTM-UNet Enc. A method or dataset without results shows **not run**, never a "
            "number. Short-budget runs are recorded in each method's `run.json`."),
        new_code_cell(
            'results_root: str = "results"  # root holding <experiment>/<DatasetXXX_Name>/<method>/per_case.csv\n'
            'tables: list = ["1", "2", "3", "real"]  # which tables (xlstm_unet.figures.PAPER_TABLES)\n'
            'reference: str = "xlstm_enc"  # method the p-values compare against\n'
            'figure_dir: str = "figures/tables"  # markdown and CSV copies, relative to the repository',
            metadata={"tags": ["parameters"]}),
        new_code_cell(
            "from IPython.display import Markdown, display\n"
            "from xlstm_unet.figures import PAPER_TABLES, paper_table, save_table\n"
            "from xlstm_unet.paths import REPO_ROOT\n\n"
            "out = REPO_ROOT / figure_dir\n"
            "out.mkdir(parents=True, exist_ok=True)\n"
            "for t in tables:\n"
            "    table = paper_table(t, REPO_ROOT / results_root, reference=reference)\n"
            '    save_table(table, out / f"table_{t}")\n'
            '    display(Markdown(f"### {PAPER_TABLES[t][\'title\']}"), table)'),
    ])


def efficiency_notebook():
    return _nb([
        new_markdown_cell(
            "# Efficiency report\n\n"
            "What the paper leaves out: what each method costs. From the benchmark JSON files "
            "(`benchmarks/vil_scaling.py --json`, `benchmarks/train_step.py --json`; `make bench` writes them): the "
            "ViL scaling curve (chunkwise vs the official quadratic parallel mLSTM); per method its parameters, "
            "forward FLOPs, train-step time, peak memory and one case's sliding-window inference; and, for every "
            "study with finished runs under `results_root`, each method's score against its cost."),
        new_code_cell(
            'vil_json: str = "benchmarks/results/vil_scaling_cpu.json"  # vil_scaling.py --json output\n'
            'step_json: str = "benchmarks/results/train_step_cpu.json"  # train_step.py --json output\n'
            'results_root: str = "results/cpu_real"  # a run-all study (<experiment>/<Dataset>/<method>/seed<k>)\n'
            '# per experiment, the train_step JSON of its own plans (else step_json\'s rows of its dimension)\n'
            'cost_jsons: dict = {"kvasir_seg": "results/cpu_real/budget_kvasir_128.json"}\n'
            'figure_dir: str = "figures/efficiency"  # plots and tables, relative to the repository',
            metadata={"tags": ["parameters"]}),
        new_code_cell(
            "from xlstm_unet.efficiency import accuracy_cost_report\n"
            "from xlstm_unet.figures import (plot_train_step, plot_vil_scaling, save_table, train_step_table,\n"
            "                                vil_scaling_table)\n"
            "from xlstm_unet.paths import REPO_ROOT\n\n"
            "out = REPO_ROOT / figure_dir\n"
            "out.mkdir(parents=True, exist_ok=True)"),
        new_markdown_cell("## ViL block: chunkwise (linear) vs parallel (quadratic) mLSTM"),
        new_code_cell(
            "vil = vil_scaling_table(REPO_ROOT / vil_json)\n"
            'save_table(vil, out / "vil_scaling")\n'
            'plot_vil_scaling(REPO_ROOT / vil_json, out / "vil_scaling")\n'
            "vil"),
        new_markdown_cell("## What each method costs: one training step (forward, backward, AdamW), FLOPs, "
                          "inference of one case"),
        new_code_cell(
            "step = train_step_table(REPO_ROOT / step_json)\n"
            'save_table(step, out / "train_step")\n'
            'plot_train_step(REPO_ROOT / step_json, out / "train_step")\n'
            "step"),
        new_markdown_cell("## Accuracy against cost\n\n"
                          "Where a study has finished runs: the score of each method (error bars: spread between "
                          "seeds) against its parameters, FLOPs, train-step time and its measured training time. "
                          "Methods without results keep their cost row with an empty score."),
        new_code_cell(
            "reports = accuracy_cost_report(REPO_ROOT / results_root, REPO_ROOT / step_json,\n"
            "                               {k: REPO_ROOT / v for k, v in cost_jsons.items()}, out)\n"
            "if not reports:\n"
            '    print(f"no finished runs under {results_root}: the costs above stand alone")\n'
            "for experiment, table in reports.items():\n"
            '    print(experiment, "- costs from", table.attrs["costs_from"])\n'
            "    display(table)"),
    ])


def viewer_notebook():
    return _nb([
        new_markdown_cell(
            "# Slice viewer: compare methods side by side\n\n"
            "Image | ground truth | each method, with coloured overlays (the same colour per class as in every figure), "
            "a case\nselector, a slice slider with axis choice for 3D cases, method toggles, overlay opacity and channel "
            "choice. The\ntitle and each panel show the Dice of the shown case per method.\n\n"
            "With `results_dir` empty this notebook shows a **synthetic demo** (`xlstm_unet.viewer.demo_data`): "
            "generated blobs\nand deliberately corrupted copies as \"methods\" — not real data and not real "
            "predictions. Point `results_dir` at\n`<results>/<DatasetName>` and `raw_dataset_dir` at "
            "`<nnUNet_raw>/<DatasetName>` to compare real predictions."),
        new_code_cell(
            'results_dir: str = ""  # <results>/<DatasetName> with <method>/predictions/; empty = synthetic demo\n'
            'raw_dataset_dir: str = ""  # <nnUNet_raw>/<DatasetName> with dataset.json, imagesTs/, labelsTs/\n'
            "methods: list = []  # methods to load; empty = all found\n"
            "max_cases: int = 20  # load at most this many test cases\n"
            'demo_kind: str = "3d"  # synthetic demo only: "2d" or "3d"\n'
            "opacity: float = 0.5  # initial overlay opacity",
            metadata={"tags": ["parameters"]}),
        new_code_cell(
            "from xlstm_unet.viewer import SliceViewer, ViewerData, demo_data\n\n"
            "if results_dir:\n"
            "    data = ViewerData.from_results(results_dir, raw_dataset_dir, methods=methods or None, "
            "max_cases=max_cases)\n"
            "else:\n"
            "    data = demo_data(demo_kind)\n"
            'print(f"{data.source}: {len(data.case_names)} cases, methods {data.methods}")'),
        new_code_cell("viewer = SliceViewer(data, opacity=opacity)\nviewer"),
    ])


def notebooks() -> dict:
    """Every notebook, by file stem, with stable cell ids (a rebuild changes only what the template changes)."""
    nbs = {"00_quickstart": experiment_notebook(
        "Quickstart: xLSTM-UNet vs nnU-Net, end to end",
        "One small experiment on the built-in 2D phantom: xLSTM-UNet **Bot**, **Enc** and the **nnU-Net** default "
        "network, a few short epochs each on the CPU. `make demo` runs it with papermill. Set `dataset` to "
        "`kvasir_seg` or `ctc_nuclei` for the real sample sets.",
        _params("phantom2d", "2d", "", ["nnunet", "xlstm_bot", "xlstm_enc"], 3, 12, {"n_train": 16, "n_test": 4},
                "results/quickstart", "figures/quickstart"),
        paper=False, synthetic=True)}
    for name, dataset, conf, title, desc, data_dir, methods, epochs, its, opts in EXPERIMENTS:
        nbs[name] = experiment_notebook(
            title, desc, _params(dataset, conf, data_dir, methods, epochs, its, opts, f"results/{name[3:]}",
                                 f"figures/{name[3:]}", fold="all" if name.startswith("2") else "0"),
            paper=name.startswith("2"))
    nbs["30_results_tables"] = results_tables_notebook()
    nbs["31_efficiency_report"] = efficiency_notebook()
    nbs["viewer_demo"] = viewer_notebook()
    for name, nb in nbs.items():
        for i, cell in enumerate(nb.cells):
            cell.id = f"{name[:20]}-{i:02d}"
    return nbs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write the notebooks to (default: here)")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    for name, nb in notebooks().items():
        nbformat.write(nb, out / f"{name}.ipynb")


if __name__ == "__main__":
    main()
