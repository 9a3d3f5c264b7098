// DPF build configuration of the LMDM bridge plugin. One source, two channel layouts: the default build is stereo;
// LMDM_MONO=1 (the Makefile's mono variant) builds "LMDM Mono", 1 in / 1 out, with its own ids.
#ifndef DISTRHO_PLUGIN_INFO_H_INCLUDED
#define DISTRHO_PLUGIN_INFO_H_INCLUDED

#define DISTRHO_PLUGIN_BRAND "LMDM"

#if defined(LMDM_MONO) && LMDM_MONO
#define DISTRHO_PLUGIN_NAME "LMDM Mono"
#define DISTRHO_PLUGIN_URI "urn:lmdm:bridge-plugin:mono"
#define DISTRHO_PLUGIN_CLAP_ID "org.lmdm.bridge.mono"
#define DISTRHO_PLUGIN_NUM_INPUTS 1
#define DISTRHO_PLUGIN_NUM_OUTPUTS 1
#else
#define DISTRHO_PLUGIN_NAME "LMDM"
#define DISTRHO_PLUGIN_URI "urn:lmdm:bridge-plugin:stereo"
#define DISTRHO_PLUGIN_CLAP_ID "org.lmdm.bridge.stereo"
#define DISTRHO_PLUGIN_NUM_INPUTS 2
#define DISTRHO_PLUGIN_NUM_OUTPUTS 2
#endif

#define DISTRHO_PLUGIN_HAS_UI 0
#define DISTRHO_PLUGIN_IS_RT_SAFE 1
#define DISTRHO_PLUGIN_WANT_LATENCY 1
#define DISTRHO_PLUGIN_WANT_PROGRAMS 1
#define DISTRHO_PLUGIN_WANT_STATE 1
#define DISTRHO_PLUGIN_WANT_FULL_STATE 1
#define DISTRHO_PLUGIN_LV2_CATEGORY "lv2:DelayPlugin"
#define DISTRHO_PLUGIN_VST3_CATEGORIES "Fx|Delay"
#define DISTRHO_PLUGIN_CLAP_FEATURES "audio-effect", "delay"

#endif  // DISTRHO_PLUGIN_INFO_H_INCLUDED
