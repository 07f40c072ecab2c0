"""phenovec process annotate (the CLI of pycytominer's platemap join) equals pycytominer 1.7.1 annotate."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pycytominer
import pytest

from phenovec.cli import main
from phenovec.io.profiles import read_table, write_profiles

from conftest import SHARED_DATA

PLATEMAP_DIR = SHARED_DATA / "lincs-cell-painting-metadata" / "platemaps_2016_04_01_a549_48hr_batch1" / "platemap"


@pytest.fixture(scope="module")
def wells_and_platemap(lincs_plate):
    pm_path = sorted(PLATEMAP_DIR.glob("*.txt"))[0]
    pm = pd.read_csv(pm_path, sep="\t")
    feats = [c for c in lincs_plate.columns if not c.startswith("Metadata_")][:40]
    w = lincs_plate[["Metadata_Plate"] + feats].copy()
    w.insert(1, "Metadata_Well", pm["well_position"].iloc[: len(w)].to_numpy())
    return w, pm_path


@pytest.mark.parametrize("out_name", ["annotated.parquet", "annotated.h5ad", "annotated.csv.gz"])
def test_cli_annotate_equals_pycytominer(wells_and_platemap, tmp_path, out_name):
    w, pm_path = wells_and_platemap
    src = write_profiles(w, tmp_path / "wells.parquet")
    out = tmp_path / out_name
    assert main(["process", "annotate", str(src), "--platemap", str(pm_path), "-o", str(out),
                 "--join-on", "Metadata_well_position", "Metadata_Well", "--quiet"]) in (0, None)
    ours = read_table(out)
    peer = pycytominer.annotate(w, str(pm_path), join_on=["Metadata_well_position", "Metadata_Well"])
    assert list(ours.columns) == list(peer.columns)
    num = [c for c in peer.columns if pd.api.types.is_float_dtype(peer[c])]
    np.testing.assert_allclose(ours[num].to_numpy(), peer[num].to_numpy(), rtol=1e-9, atol=0, equal_nan=True)
    rest = [c for c in peer.columns if c not in set(num)]
    na = "<missing>"  # None (Parquet, AnnData) and NaN (pandas CSV) are the same missing value
    assert (ours[rest].astype(object).where(ours[rest].notna(), na).astype(str).to_numpy()
            == peer[rest].astype(object).where(peer[rest].notna(), na).astype(str).to_numpy()).all()


def test_cli_annotate_old_output_spelling_and_errors(wells_and_platemap, tmp_path, capsys):
    w, pm_path = wells_and_platemap
    src = write_profiles(w, tmp_path / "wells.parquet")
    out = tmp_path / "a.parquet"
    # the hidden old spelling still works
    assert main(["process", "annotate", str(src), "--platemap", str(pm_path), "--output", str(out),
                 "--quiet"]) in (0, None)
    assert out.exists()
    assert main(["process", "annotate", str(src), "--platemap", str(pm_path), "-o", str(tmp_path / "b.parquet"),
                 "--join-on", "Metadata_nope", "Metadata_Well"]) == 2
    assert "Metadata_nope" in capsys.readouterr().err
    assert main(["process", "annotate", str(src), "--platemap", str(tmp_path / "missing.txt"),
                 "-o", str(tmp_path / "c.parquet")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert not (tmp_path / "b.parquet").exists() and not (tmp_path / "c.parquet").exists()
    help_text = _help(["process", "annotate", "--help"], capsys)
    flat = " ".join(help_text.split())
    assert "-o OUT, --out OUT" in flat and "--output OUT" not in flat
    assert "(default: Metadata_well_position Metadata_Well)" in flat


def test_repeated_platemap_keys_are_refused_naming_the_file(wells_and_platemap, tmp_path, capsys):
    """A platemap listing a well twice silently repeated that well's profile, once per listing (pycytominer does the
    same), doubling its weight in every aggregate and mAP after it."""
    w, pm_path = wells_and_platemap
    pm = pd.read_csv(pm_path, sep="\t")
    doubled = pd.concat([pm, pm.iloc[[3]].assign(broad_sample="other")], ignore_index=True)
    bad = tmp_path / "platemap.txt"
    doubled.to_csv(bad, sep="\t", index=False)
    well = pm["well_position"].iloc[3]
    with pytest.raises(ValueError, match=f"platemap.txt: platemap rows \\[3, {len(pm)}\\] share the key "
                                         f"Metadata_well_position = '{well}'"):
        from phenovec.process.annotate import annotate

        annotate(w, str(bad))
    src = write_profiles(w, tmp_path / "wells.parquet")
    assert main(["process", "annotate", str(src), "--platemap", str(bad), "-o", str(tmp_path / "a.parquet")]) == 2
    assert "share the key" in capsys.readouterr().err and not (tmp_path / "a.parquet").exists()
    # the peer repeats the row: what the refusal prevents
    assert len(pycytominer.annotate(w, doubled, join_on=["Metadata_well_position", "Metadata_Well"])) == len(w) + 1


def test_external_metadata_prefixing_and_repeats_as_pycytominer():
    from phenovec.process.annotate import annotate

    prof = pd.DataFrame({"Metadata_Well": ["A01", "A02", "A03"], "Metadata_broad_sample": ["c1", "c2", "c1"],
                         "Cells_x": [1.0, 2.0, 3.0]})
    pm = pd.DataFrame({"well_position": ["A01", "A02", "A03"], "dose": [1.0, 2.0, 3.0]})
    ext = pd.DataFrame({"Metadata_broad_sample": ["c1", "c2"], "Cells_line": ["U2OS", "A549"], "Nuclei_n": [1.0, 2.0],
                        "Image_Count": [3, 4], "Image_url": ["u1", "u2"], "moa": ["m1", "m2"],
                        "Image_Metadata_QC": ["ok", "bad"]})
    kw = dict(join_on=["Metadata_well_position", "Metadata_Well"], external_metadata=ext,
              external_join_on="Metadata_broad_sample")
    ours, peer = annotate(prof, pm, **kw), pycytominer.annotate(prof, pm, **kw)
    assert list(ours.columns) == list(peer.columns)
    assert "Cells_line" in ours.columns and "Metadata_moa" in ours.columns
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), peer.reset_index(drop=True), check_dtype=False)
    # exact duplicate rows are harmless (dropped as by the peer); two different rows for one key are refused
    kw["external_metadata"] = pd.concat([ext, ext.iloc[[0]]], ignore_index=True)
    assert len(annotate(prof, pm, **kw)) == 3
    kw["external_metadata"] = pd.concat([ext, ext.iloc[[0]].assign(moa="m3")], ignore_index=True)
    with pytest.raises(ValueError, match=r"the external metadata: external metadata rows \[0, 2\] share the key "
                                         r"Metadata_broad_sample = 'c1'"):
        annotate(prof, pm, **kw)


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit):
        main(argv)
    return capsys.readouterr().out
