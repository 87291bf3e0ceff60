"""DICOM in: series written by SimpleITK from NIfTI volumes land on the NIfTI's world coordinates.

The series are written by an independent implementation (ITK reads the NIfTI into LPS and its GDCM
writer sets ImagePositionPatient/ImageOrientationPatient), so a sign or axis-order slip in the reader
cannot cancel against the same slip in the writer.
"""

from __future__ import annotations

import copy
import shutil

import nibabel as nib
import numpy as np
import pytest

from napari_diffmed import dicom, io
from napari_diffmed._napari_io import get_reader
from napari_diffmed.geometry import world_matrix


sitk = pytest.importorskip("SimpleITK")
pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

SHAPE = (7, 8, 5)  # (x, y, z) of the RAS phantom
RAS_AFFINE = np.array([[2.0, 0, 0, -10], [0, 2.5, 0, 20], [0, 0, 3.0, -5], [0, 0, 0, 1]])
UID = "1.2.826.0.1.3680043.8.498.4242"
# storage order of the NIfTI (its third axis is the slice axis of the series)
ORIENTATIONS = {"axial_RAS": "RAS", "axial_LPS": "LPS", "sagittal": "PSL", "coronal": "LIA", "oblique": "RAS"}


def rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    cz, sz = np.cos(np.radians(degrees_z)), np.sin(np.radians(degrees_z))
    cx, sx = np.cos(np.radians(degrees_x)), np.sin(np.radians(degrees_x))
    out = np.eye(4)
    out[:3, :3] = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return out


def phantom() -> np.ndarray:
    """int16 RAS volume: a unique value per voxel, a bright block near the origin and a marker far from it."""
    p = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    p[1:3, 2:4, 1:3] += 1000
    p[6, 7, 4] += 2000
    return p


def save_nifti(path, codes: str, oblique: bool = False) -> str:
    img = nib.Nifti1Image(phantom(), rotation(20, 10) @ RAS_AFFINE if oblique else RAS_AFFINE)
    img = img.as_reoriented(nib.orientations.ornt_transform(
        nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt(codes)))
    img.set_data_dtype(np.int16)
    nib.save(img, str(path))
    return str(path)


def write_series(nifti, folder, uid: str = UID, skip=(), description: str = "phantom", names=None):
    """One DICOM file per slice along the NIfTI's third axis, written by SimpleITK (GDCM)."""
    img = sitk.ReadImage(str(nifti))
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.KeepOriginalImageUIDOn()
    n = img.GetDepth()
    for k in range(n):
        if k in skip:
            continue
        piece = img[:, :, k:k + 1]
        tags = {"0020|000e": uid, "0020|000d": uid + ".1", "0008|0060": "MR", "0008|103e": description,
                "0020|0013": str(k + 1), "0008|0018": f"{uid}.{k + 1}"}
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / (names(k) if names else f"IM{n - k:04d}.dcm")))  # names against slice order
        writer.Execute(piece)
    return folder


def world_of_every_voxel(data, kwargs) -> dict[float, np.ndarray]:
    """Voxel value -> world position (napari order) for a layer tuple."""
    matrix = world_matrix(kwargs, data.ndim)
    index = np.indices(data.shape).reshape(data.ndim, -1)
    world = (matrix[:-1, :-1] @ index + matrix[:-1, -1:]).T
    return dict(zip(data.reshape(-1).tolist(), world))


@pytest.fixture(params=list(ORIENTATIONS))
def series(request, tmp_path):
    """(NIfTI source, DICOM series folder) for each orientation."""
    name = request.param
    nifti = save_nifti(tmp_path / f"{name}.nii.gz", ORIENTATIONS[name], oblique=name == "oblique")
    return nifti, write_series(nifti, tmp_path / name)


def test_series_has_the_world_coordinates_of_its_nifti(series):
    nifti, folder = series
    ref, ref_kw, ref_kind = io.read_nifti(nifti)
    data, kwargs, kind = io.read_scan(folder)
    assert kind == ref_kind == "image" and data.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(data, ref)
    for key in ("scale", "translate", "affine"):
        assert (key in kwargs) == (key in ref_kw)
        if key in ref_kw:
            np.testing.assert_allclose(kwargs[key], ref_kw[key], atol=1e-4)
    expected, got = world_of_every_voxel(ref, ref_kw), world_of_every_voxel(data, kwargs)
    assert len(expected) == ref.size  # every voxel value is unique: each is found at its own world position
    assert all(np.allclose(got[value], where, atol=1e-4) for value, where in expected.items())
    assert kwargs["metadata"]["dicom"]["SeriesInstanceUID"] == UID and kwargs["name"] == folder.name
    np.testing.assert_allclose(kwargs["metadata"]["spacing"], ref_kw["metadata"]["spacing"], atol=1e-5)


def test_results_save_as_nifti_in_the_series_space(series, tmp_path):
    nifti, folder = series
    data, kwargs, _ = io.read_scan(folder)
    img, _ = dicom.to_nifti(folder)
    out = io.write_nifti(tmp_path / "result.nii", data * 2, kwargs["metadata"])
    written = nib.load(str(out))
    assert written.shape == img.shape and np.allclose(written.affine, img.affine)  # the series' own voxel grid
    assert int(written.header["sform_code"]) == 1  # scanner coordinates, as DICOM's
    again, again_kw, _ = io.read_nifti(out)
    ref, ref_kw, _ = io.read_nifti(nifti)
    np.testing.assert_array_equal(again, ref * 2)
    np.testing.assert_allclose(world_matrix(again_kw, 3), world_matrix(ref_kw, 3), atol=1e-4)


def enhanced_multiframe(folder, path, order=None):
    """Merge a single-frame series into one enhanced multi-frame file (per-frame positions), frames shuffled."""
    slices = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    order = order if order is not None else np.random.default_rng(0).permutation(len(slices))
    pixels = b"".join(slices[k].pixel_array.tobytes() for k in order)
    ds = copy.deepcopy(slices[0])
    ds.NumberOfFrames = len(slices)
    ds.PixelData = pixels
    frame = pydicom.Dataset
    shared = frame()
    shared.PlaneOrientationSequence = [frame()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = ds.ImageOrientationPatient
    shared.PixelMeasuresSequence = [frame()]
    shared.PixelMeasuresSequence[0].PixelSpacing = ds.PixelSpacing
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = []
    for k in order:
        item = frame()
        item.PlanePositionSequence = [frame()]
        item.PlanePositionSequence[0].ImagePositionPatient = slices[k].ImagePositionPatient
        ds.PerFrameFunctionalGroupsSequence.append(item)
    del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing
    ds.save_as(path)
    return path


@pytest.mark.parametrize("orientation", ["sagittal", "oblique"])
def test_multiframe_file_matches_its_nifti(tmp_path, orientation):
    nifti = save_nifti(tmp_path / "src.nii.gz", ORIENTATIONS[orientation], oblique=orientation == "oblique")
    path = enhanced_multiframe(write_series(nifti, tmp_path / "series"), tmp_path / "multi.dcm")
    ref, ref_kw, _ = io.read_nifti(nifti)
    data, kwargs, _ = io.read_scan(path)
    np.testing.assert_array_equal(data, ref)
    np.testing.assert_allclose(world_matrix(kwargs, 3), world_matrix(ref_kw, 3), atol=1e-4)
    assert kwargs["name"] == "multi"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "rtdose.dcm",
                                  "liver_1frame.dcm"])
def test_pydicom_files_put_each_pixel_where_its_header_says(name):
    """Each stored pixel (after the modality rescale) is found at the layer voxel its patient position maps to."""
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    data, kwargs, kind = io.read_scan(path)
    frames = dicom._frames(ds, path)
    values = ds.pixel_array.reshape((len(frames), ds.Rows, ds.Columns)).astype(np.float64)
    to_voxel = np.linalg.inv(world_matrix(kwargs, data.ndim))
    rng = np.random.default_rng(0)
    for f, r, c in zip(rng.integers(0, len(frames), 40), rng.integers(0, ds.Rows, 40), rng.integers(0, ds.Columns, 40)):
        frame = frames[f]
        row, col = frame["orientation"][:3], frame["orientation"][3:]
        lps = frame["position"] + c * frame["spacing"][1] * row + r * frame["spacing"][0] * col
        ras = lps * [-1, -1, 1]
        world = ras[::-1][-data.ndim:]  # napari order (S, A, R); a 2D image keeps (A, R)
        voxel = np.round(to_voxel[:-1, :-1] @ world + to_voxel[:-1, -1]).astype(int)
        assert data[tuple(voxel)] == pytest.approx(values[f, r, c] * frame["slope"] + frame["intercept"], rel=1e-5)
    assert kind == ("labels" if name.startswith("liver") else "image")
    assert data.ndim == (3 if name == "rtdose.dcm" else 2)


def test_mr_small_compressed_and_plain_agree():
    plain, plain_kw, _ = io.read_scan(get_testdata_file("MR_small.dcm"))
    rle, rle_kw, _ = io.read_scan(get_testdata_file("MR_small_RLE.dcm"))
    np.testing.assert_array_equal(plain, rle)
    np.testing.assert_allclose(plain_kw["translate"], rle_kw["translate"])


def test_missing_slices_are_named(tmp_path):
    nifti = save_nifti(tmp_path / "src.nii.gz", "LPS")
    folder = write_series(nifti, tmp_path / "gap", skip=(2,))
    with pytest.raises(ValueError, match=r"missing slices or uneven spacing: slice positions jump by 6 mm .*usual "
                                         r"step is 3 mm \(4 slices\)"):
        io.read_scan(folder)


def test_two_series_in_one_folder_are_named_and_one_can_be_chosen(tmp_path):
    nifti = save_nifti(tmp_path / "src.nii.gz", "RAS")
    folder = write_series(nifti, tmp_path / "mixed", description="first")
    other = UID + ".7"
    write_series(nifti, folder, uid=other, description="second", names=lambda k: f"B{k}.dcm")
    with pytest.raises(ValueError, match=rf"holds 2 image series, choose one with series=UID.*{UID} \(MR 'first', "
                                         rf"5 files\); {other} \(MR 'second', 5 files\)"):
        io.read_scan(folder)
    data, kwargs, _ = io.read_scan(folder, series=other)
    np.testing.assert_array_equal(data, io.read_nifti(nifti)[0])
    with pytest.raises(ValueError, match="series '1.2.3' is not in"):
        io.read_scan(folder, series="1.2.3")


def test_repeated_positions_are_refused(tmp_path):
    nifti = save_nifti(tmp_path / "src.nii.gz", "RAS")
    folder = write_series(nifti, tmp_path / "echoes")
    write_series(nifti, folder, names=lambda k: f"E2_{k}.dcm")  # a second echo in the same series
    with pytest.raises(ValueError, match="5 images repeat a slice position"):
        io.read_scan(folder)


def test_non_image_objects_alone_are_refused_and_beside_a_series_ignored(tmp_path):
    folder = tmp_path / "objects"
    folder.mkdir()
    for name in ("rtstruct.dcm", "test-SR.dcm"):
        shutil.copy(get_testdata_file(name), folder / name)
    with pytest.raises(ValueError, match=r"holds no DICOM images, only 2 non-image objects \(Comprehensive SR "
                                         r"Storage, RT Structure Set Storage\)"):
        io.read_scan(folder)
    with pytest.raises(ValueError, match="is a DICOM RT Structure Set Storage, not an image"):
        io.read_scan(folder / "rtstruct.dcm")
    nifti = save_nifti(tmp_path / "src.nii.gz", "RAS")
    write_series(nifti, folder)
    (folder / "notes.txt").write_text("acquired on a Tuesday")
    np.testing.assert_array_equal(io.read_scan(folder)[0], io.read_nifti(nifti)[0])


def test_unreadable_and_unsupported_files_say_why(tmp_path):
    with pytest.raises(ValueError, match="cannot read the pixel data of .*MR_truncated.dcm"):
        io.read_scan(get_testdata_file("MR_truncated.dcm"))
    with pytest.raises(ValueError, match=r"colour DICOM images \(RGB\) are not supported"):
        io.read_scan(get_testdata_file("SC_rgb_rle.dcm"))
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00\x01not dicom" * 10)
    with pytest.raises(ValueError, match="junk.dcm is not a DICOM file"):
        io.read_scan(junk)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no DICOM files in .*empty \(0 other files\); point at one series folder"):
        io.read_scan(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.read_scan(tmp_path / "nowhere")
    picture = tmp_path / "photo.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(ValueError, match=r"photo.png is not a DICOM file \(nor NIfTI .nii/.nii.gz\)"):
        io.read_scan(picture)
    nifti = save_nifti(tmp_path / "src.nii.gz", "RAS")
    with pytest.raises(ValueError, match="series= chooses a series in a DICOM folder"):
        io.read_scan(nifti, series=UID)


def test_napari_reader_takes_series_folders_files_and_lists(tmp_path):
    nifti = save_nifti(tmp_path / "src.nii.gz", "PSL")
    folder = write_series(nifti, tmp_path / "series", names=lambda k: f"IM{k}")  # no extension: found by content
    ref = io.read_nifti(nifti)[0]
    for path in (folder, str(folder), sorted(str(p) for p in folder.iterdir())):
        reader = get_reader(path)
        assert reader is not None
        ((data, kwargs, kind),) = reader(path)
        np.testing.assert_array_equal(data, ref)
        assert kind == "image" and kwargs["colormap"] == "gray"
    assert get_reader(str(tmp_path)) is None  # a folder without DICOM files directly in it
    empty = tmp_path / "empty"
    empty.mkdir()
    assert get_reader(str(empty)) is None and get_reader(str(tmp_path / "x.png")) is None


def test_npe2_opens_a_folder_with_this_plugin(tmp_path):
    import npe2

    npe2.PluginManager.instance().discover()
    nifti = save_nifti(tmp_path / "src.nii.gz", "LIA")
    folder = write_series(nifti, tmp_path / "series")
    ((data, kwargs, kind),) = npe2.read([str(folder)], stack=False, plugin_name="napari-diffmed")
    np.testing.assert_array_equal(data, io.read_nifti(nifti)[0])


@pytest.fixture
def command_inputs(tmp_path, small_volume):
    """The phantom as an int16 NIfTI (LPS storage) and as a DICOM series of the same name; a lesion mask of both."""
    scan = np.round(small_volume.image).astype(np.int16)
    mask = np.zeros_like(scan)
    mask[2:4, 10:18, 12:20] = 1
    affine = np.diag([*small_volume.spacing[::-1], 1.0])  # napari (z, y, x) -> NIfTI (x, y, z)
    paths = {}
    for name, data in (("scan", scan), ("mask", mask)):
        img = nib.Nifti1Image(np.transpose(data, (2, 1, 0)), affine)
        img = img.as_reoriented(nib.orientations.axcodes2ornt("LPS"))
        img.set_data_dtype(np.int16)
        nifti = tmp_path / "nifti" / f"{name}.nii.gz"
        nifti.parent.mkdir(exist_ok=True)
        nib.save(img, str(nifti))
        paths[name] = (nifti, write_series(nifti, tmp_path / "dicom" / name, uid=f"{UID}.{len(paths) + 1}"))
    return paths


FAST = {
    "segment": lambda p, model: ["segment", str(p["scan"]), "--model", str(model), "--members", "2", "--steps", "2",
                                 "--slices", "2:3"],
    "anomaly": lambda p, model: ["anomaly", str(p["scan"]), "--model", str(model), "--steps", "10", "--slices", "2:4",
                                 "--mask", str(p["mask"])],
    "inpaint": lambda p, model: ["inpaint", str(p["scan"]), str(p["mask"]), "--model", str(model), "--proposals", "1",
                                 "--steps", "4", "--jump-length", "2", "--resamplings", "2"],
}


@pytest.mark.parametrize("command", list(FAST))
def test_every_command_takes_a_series_folder(command, command_inputs, tmp_path, request):
    """Same results from the series as from its NIfTI, written in the series' own voxel grid."""
    from napari_diffmed.cli import main

    model = request.getfixturevalue("tiny_seg_model" if command == "segment" else "tiny_image_model")
    outputs = {}
    for kind, index in (("nifti", 0), ("dicom", 1)):
        inputs = {name: pair[index] for name, pair in command_inputs.items()}
        out = tmp_path / f"out_{kind}"
        assert main([*FAST[command](inputs, model), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
        outputs[kind] = sorted(out.glob("*.nii.gz"))
    assert [p.name for p in outputs["nifti"]] == [p.name for p in outputs["dicom"]] and outputs["dicom"]
    series_grid, _ = dicom.to_nifti(command_inputs["scan"][1])
    for from_nifti, from_dicom in zip(outputs["nifti"], outputs["dicom"]):
        written = nib.load(str(from_dicom))
        assert written.shape == series_grid.shape and np.allclose(written.affine, series_grid.affine)
        a, a_kw, _ = io.read_nifti(from_nifti)
        b, b_kw, _ = io.read_nifti(from_dicom)
        np.testing.assert_allclose(b, a, atol=1e-5, err_msg=from_dicom.name)
        np.testing.assert_allclose(world_matrix(b_kw, 3), world_matrix(a_kw, 3), atol=1e-4)


def test_commands_name_the_series_of_a_mixed_folder_and_take_one_with_series(tmp_path, tiny_image_model, capsys):
    from napari_diffmed.cli import main

    nifti = save_nifti(tmp_path / "src.nii.gz", "LPS")
    folder = write_series(nifti, tmp_path / "mixed", description="first")
    write_series(nifti, folder, uid=UID + ".9", description="second", names=lambda k: f"B{k}.dcm")
    args = ["anomaly", str(folder), "--out", str(tmp_path / "out"), "--model", str(tiny_image_model), "--steps", "10",
            "--slices", "1:2", "--device", "cpu", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{UID} (MR 'first', 5 files); {UID}.9 (MR 'second', 5 files)" in err and "--series UID" in err
    assert main([*args, "--series", UID + ".9"]) == 0
    assert (tmp_path / "out" / "mixed_anomaly_heatmap.nii.gz").exists()
