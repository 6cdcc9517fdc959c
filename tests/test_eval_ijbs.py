from __future__ import annotations

import numpy as np
import pytest

from quality_lora.evaluation import ijbs_identification, pool_templates
from quality_lora.evaluation.ijbs import evaluate_ijbs, read_ijbs_protocol


def test_pool_templates_weightings_against_hand_computation():
    f = np.array([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ids, t = pool_templates(f, [5, 5, 9], "norm")            # mean (1.5, 0.5) -> unit
    np.testing.assert_array_equal(ids, [5, 9])
    np.testing.assert_allclose(t[0], np.array([1.5, 0.5]) / np.hypot(1.5, 0.5))
    _, t = pool_templates(f, [5, 5, 9], "unit")              # (1, 0) + (0, 1)
    np.testing.assert_allclose(t[0], [2 ** -0.5, 2 ** -0.5])
    _, t = pool_templates(f, [5, 5, 9], "norm_squared")      # (9, 0) + (0, 1): PETALface
    np.testing.assert_allclose(t[0], np.array([9.0, 1.0]) / np.hypot(9, 1))
    with pytest.raises(ValueError, match="weighting"):
        pool_templates(f, [1, 1, 1], "mean")


def test_closed_and_open_set_closed_form():
    e = np.eye(8)
    # G1: subjects 0,1 ; G2: subjects 2,3. Probes: 0,1,2,3 (mates) and 7 (non-mate everywhere).
    g1, s1 = e[[0, 1]], [0, 1]
    g2, s2 = e[[2, 3]], [2, 3]
    probes = np.stack([e[0] + 0.1 * e[5], e[1] + 0.9 * e[0], e[2], e[3] + 0.1 * e[5], 0.5 * e[0] + e[7]])
    res = ijbs_identification(probes, [0, 1, 2, 3, 7], g1, s1, g2, s2, ranks=(1, 5))
    # probe 1 scores its mate (1) above subject 0's 0.9/|.|: all four mates rank first
    assert res["rank_1"] == 1.0 and res["n_probes"] == 4 and res["n_unmatched_probes"] == 1
    # Open set, G1: non-mates = probes of subjects 2, 3, 7, max scores 0, 0, 0.447; FPIR 1 %
    # -> int(3 * 0.01) = 0 alarms -> threshold just above 0.447: probe 0 (0.995) and probe 1
    # (1/|(0.9,1)| = 0.74) pass -> 2/2. G2: non-mates 0, 1, 7 with max 0, 0, 0 -> threshold 1e-8,
    # mates 2 (1.0) and 3 (0.995) pass -> 1. Average 1.0. FPIR 10 %: also 0 alarms.
    assert res["tpir_at_fpir_0.01"] == 1.0 and res["tpir_at_fpir_0.1"] == 1.0
    # lower probe 1's mate score below the distractor's max: it fails the open-set threshold
    probes[1] = e[1] + 2.5 * e[6]
    res = ijbs_identification(probes, [0, 1, 2, 3, 7], g1, s1, g2, s2)
    assert res["tpir_at_fpir_0.01"] == pytest.approx((0.5 + 1.0) / 2)
    assert res["rank_1"] == 1.0   # still first in closed set


def _write_protocol(root):
    (root / "galleries").mkdir(parents=True)
    (root / "ijbs_metadata.csv").write_text(
        "SUBJECT_ID,FILENAME,FRAME\n1,videos/10.mp4,1\n2,videos/20.mp4,1\n3,videos/30.mp4,1\n"
        "1,img/1.jpg,\n2,img/2.jpg,\n")
    (root / "ijbs_surveillance_to_single-booking_probe.csv").write_text("FILENAME\nvideos/10.mp4\nvideos/20.mp4\nvideos/30.mp4\n")
    (root / "ijbs_surveillance_to_surveillance_probe.csv").write_text("FILENAME\nvideos/10.mp4\n")
    for g, subj in (("g1", 1), ("g2", 2)):
        (root / "galleries" / f"ijbs_surveillance_to_single_{g}.csv").write_text(
            f"TEMPLATE_ID,SUBJECT_ID,FILENAME\n{subj},{subj},img/{subj}.jpg\n")
        (root / "galleries" / f"ijbs_surveillance_to_booking_{g}.csv").write_text(
            f"TEMPLATE_ID,SUBJECT_ID,FILENAME\n{subj},{subj},img/{subj}.jpg\n")
        (root / "galleries" / f"ijbs_surveillance_to_surveillance_{g}.csv").write_text(
            f"TEMPLATE_ID,SUBJECT_ID,FILENAME\n{subj},{subj},videos/{subj}0.mp4\n")


def test_protocol_reader_and_evaluation(tmp_path):
    _write_protocol(tmp_path)
    proto = read_ijbs_protocol(tmp_path)
    assert [t.subject for t in proto.templates["surveillance_probe"]] == [1, 2, 3]
    assert proto.templates["single_g1"][0].media == ["img/1.jpg"]
    # images: two frames per video, one still per subject
    e = np.eye(4)
    subjects = [1, 1, 2, 2, 3, 3, 1, 2]
    media = ["videos/10.mp4"] * 2 + ["videos/20.mp4"] * 2 + ["videos/30.mp4"] * 2 + ["img/1.jpg", "img/2.jpg"]
    feats = np.stack([e[0], e[0] + 0.2 * e[3], e[1], e[1], e[2], e[2], e[0], e[1]])
    res = evaluate_ijbs(feats, subjects, media, proto, protocols=("surveillance_to_single", "surveillance_to_booking"))
    for name in ("surveillance_to_single", "surveillance_to_booking"):
        assert res[name]["rank_1"] == 1.0 and res[name]["n_probes"] == 2
        # non-mates per gallery: 2 probes, 0 alarms allowed; subject 3's video scores 0 -> all pass
        assert res[name]["tpir_at_fpir_0.01"] == 1.0
    with pytest.raises(ValueError, match="unknown IJB-S protocol"):
        evaluate_ijbs(feats, subjects, media, proto, protocols=("nope",))


def test_protocol_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="ijbs_metadata.csv"):
        read_ijbs_protocol(tmp_path)
    _write_protocol(tmp_path)
    (tmp_path / "galleries" / "ijbs_surveillance_to_single_g2.csv").write_text("A,B,C\n1,two,img/2.jpg\n")
    with pytest.raises(ValueError, match=r"single_g2.csv:2: subject id 'two'"):
        read_ijbs_protocol(tmp_path)
