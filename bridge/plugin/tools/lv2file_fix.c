/* LD_PRELOAD shim for Debian's lv2file 0.95 (tests only). lv2file builds the worker#schedule feature in a block
 * scope that ends before it calls lilv_plugin_instantiate, so the plugin finds a feature whose URI is garbage (NULL
 * here) and crashes on it; every plugin that needs the worker does (DPF's, with state, among them). This wraps
 * lilv_plugin_instantiate and puts a valid worker#schedule feature in that slot. lv2file never sends the plugin a
 * state message, so no work is ever scheduled through it. The plugin binary is the one users install. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef struct { const char* URI; void* data; } Feature;
typedef struct { void* handle; int (*schedule_work)(void* handle, unsigned size, const void* data); } Schedule;
typedef void* (*Instantiate)(const void* plugin, double rate, const Feature* const* features);

static int no_work(void* handle, unsigned size, const void* data) {
    (void)handle; (void)size; (void)data;
    return 1; /* LV2_WORKER_ERR_UNKNOWN: never expected */
}

static Schedule schedule = {NULL, no_work};
static Feature worker = {"http://lv2plug.in/ns/ext/worker#schedule", &schedule};

void* lilv_plugin_instantiate(const void* plugin, double rate, const Feature* const* features) {
    const Feature* fixed[32];
    size_t n = 0;
    for (; features != NULL && features[n] != NULL && n < 31; ++n)
        fixed[n] = features[n]->URI != NULL ? features[n] : &worker;
    fixed[n] = NULL;
    Instantiate real = (Instantiate)dlsym(RTLD_NEXT, "lilv_plugin_instantiate");
    return real(plugin, rate, fixed);
}
