# One plugin variant (NAME, MONO) in every format; run by the Makefile beside it, which sets BUILD.
FILES_DSP = src/LmdmPlugin.cpp src/Link.cpp src/Connection.cpp src/Stream.cpp src/Osc.cpp
DPF_TARGET_DIR = $(BUILD)/bin
DPF_BUILD_DIR = $(BUILD)/obj/$(NAME)

include $(DPF_PATH)/Makefile.plugins.mk

BUILD_CXX_FLAGS += -std=gnu++17 -I$(BUILD)/gen -DLMDM_MONO=$(MONO)
LINK_FLAGS += -pthread

all: vst3 clap lv2 $(TARGET_DIR)/$(NAME).lv2/manifest.ttl

# the LV2 bundle's description, written by DPF's generator from the built plugin
$(TARGET_DIR)/$(NAME).lv2/manifest.ttl: $(lv2) $(BUILD)/lv2_ttl_generator
	@# DPF 1.6's preset export asserts on the state hints of program i instead of state j: harmless, filtered
	@cd $(TARGET_DIR)/$(NAME).lv2 && out=$$($(BUILD)/lv2_ttl_generator ./$(NAME)$(LIB_EXT) 2>&1) || \
		{ echo "$$out" >&2; exit 1; }; echo "$$out" | grep -v 'fData->stateCount\|^Generat\|^Writing\|^Done\|done!\|^$$' >&2 || true
