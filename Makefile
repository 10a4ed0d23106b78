PY ?= python3
BACKBONE ?= edsr
SCALE ?= 4
METHOD ?= cadyq
MODEL ?=
TILE ?= 96
BATCH ?= 1:16:64
OUT ?= build
CPP_BUILD ?= build/cpp

.PHONY: install install-trt test test-all engine clean
.PHONY: cpp

TRITON_SERVER ?= nvidia-pytriton==0.7.0

install:  ## the package, its test tools, TensorRT-RTX (builds engines without a GPU), the CPU peers (OpenVINO, NNCF), video, serving
	$(PY) -m pip install -e ".[dev,trt-rtx,peers,video,serve]" -c constraints.txt
	$(PY) -m pip install --no-deps "$(TRITON_SERVER)"  # the Triton server binary only: see cadyq/serve/server.py

test:  ## the default suite: everything that runs without a GPU
	$(PY) -m pytest -q -m "not gpu" -n 2

test-all:
	$(PY) -m pytest -q

cpp:  ## the C++ library, cadyq-upscale and their tests (cpp/) into $(CPP_BUILD); installs libpng-dev/libjpeg-dev if missing
	PY=$(PY) sh cpp/scripts/build.sh $(CPP_BUILD)

engine:  ## export BACKBONE (x SCALE, METHOD; MODEL=ckpt or the shipped weights) and build its engine
	$(PY) -m cadyq engine --make --backbone $(BACKBONE) --scale $(SCALE) --method $(METHOD) \
		$(if $(MODEL),--model $(MODEL)) --tile $(TILE) --batch $(BATCH) --out-dir $(OUT) --overwrite

clean:
	rm -rf $(OUT) .pytest_cache
