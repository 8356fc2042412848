"""The build itself: a fresh clone's `cmake --preset windows` (no Criterion for mingw
built yet) still builds echoport.exe, skipping the unit tests with a warning, while
-DEP_REQUIRE_TESTS=ON (what ci/test passes) makes the missing Criterion fatal."""

import shutil
import subprocess

import pytest

from echolib import ROOT, only_builds

TOOLCHAIN = ROOT / "ci" / "toolchain-mingw64.cmake"


def configure(binary_dir, *extra):
    return subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(binary_dir), f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}",
         "-DCMAKE_BUILD_TYPE=Release", "-DEP_CRITERION_PREFIX=/nonexistent", *extra],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


def need_cross_toolchain(build):
    if not build.wine:
        pytest.skip("runs natively on Windows: the mingw-w64 cross toolchain is a Linux host's")
    if not shutil.which("cmake") or not shutil.which("x86_64-w64-mingw32-gcc"):
        pytest.fail("cmake and x86_64-w64-mingw32-gcc are needed (bash ci/setup)", pytrace=False)


@only_builds("windows")
@pytest.mark.ep_timeout(300)
def test_windows_build_without_criterion_skips_the_unit_tests(build, tmp_path):
    need_cross_toolchain(build)
    p = configure(tmp_path / "b")
    assert p.returncode == 0, f"configure failed without Criterion:\n{p.stdout}\n{p.stderr}"
    assert "CMake Warning" in p.stderr and "ci/build-criterion-mingw" in p.stderr, (
        f"no warning naming ci/build-criterion-mingw:\n{p.stderr}")
    b = subprocess.run(["cmake", "--build", str(tmp_path / "b"), "--target", "echoport", "-j2"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240)
    assert b.returncode == 0, f"build failed:\n{b.stdout[-3000:]}\n{b.stderr[-3000:]}"
    assert (tmp_path / "b" / "bin" / "echoport.exe").is_file()


@only_builds("windows")
@pytest.mark.ep_timeout(120)
def test_windows_build_requiring_tests_fails_without_criterion(build, tmp_path):
    need_cross_toolchain(build)
    p = configure(tmp_path / "b", "-DEP_REQUIRE_TESTS=ON")
    assert p.returncode != 0, "EP_REQUIRE_TESTS=ON configured without Criterion"
    assert "CMake Error" in p.stderr and "ci/build-criterion-mingw" in p.stderr, p.stderr
