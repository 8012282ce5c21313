/*
 * libella from C: loads the models, generates an image into a PPM file, and exercises the
 * error paths (NULL arguments, bad paths, invalid UTF-8, bad sizes, a small buffer, a cancel
 * from a second thread, progress counts), and samples from a cached prompt after freeing T5. Exits non-zero on the first unexpected result.
 *
 *   generate T5_DIR ELLA_FILE ELLA_CONFIG_OR_- SD_DIR OUT.ppm [STEPS [SIZE]]
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ella.h"

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);             \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, " (last error: %s)\n", ella_last_error_message()); \
            exit(1);                                                            \
        }                                                                       \
    } while (0)

struct progress {
    atomic_uint steps_seen;
    atomic_uint last_total;
};

static void on_progress(uint32_t step, uint32_t total, void *user_data) {
    struct progress *p = user_data;
    atomic_store(&p->steps_seen, step);
    atomic_store(&p->last_total, total);
}

static int log_count = 0;
static void on_log(ella_log_level level, const char *message, void *user_data) {
    (void)level;
    (void)user_data;
    log_count++;
    fprintf(stderr, "[log] %s\n", message);
}

struct canceller {
    ella_context *ctx;
    struct progress *progress;
};

/* Waits until the generation has made a step, then cancels it from this thread. */
static void *cancel_soon(void *arg) {
    struct canceller *c = arg;
    while (atomic_load(&c->progress->steps_seen) < 1) {
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
    }
    ella_context_cancel(c->ctx);
    return NULL;
}

static void write_ppm(const char *path, const ella_image *image) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot write %s", path);
    fprintf(f, "P6\n%u %u\n255\n", image->width, image->height);
    fwrite(image->pixels, 1, (size_t)image->width * image->height * image->channels, f);
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s T5_DIR ELLA_FILE ELLA_CONFIG_OR_- SD_DIR OUT.ppm [STEPS [SIZE]]\n", argv[0]);
        return 2;
    }
    uint32_t steps = argc > 6 ? (uint32_t)atoi(argv[6]) : 4;
    uint32_t size = argc > 7 ? (uint32_t)atoi(argv[7]) : 64;
    char expected_version[32];
    snprintf(expected_version, sizeof expected_version, "%u.%u.%u", ELLA_VERSION_MAJOR, ELLA_VERSION_MINOR,
             ELLA_VERSION_PATCH);
    CHECK(strcmp(ella_version(), expected_version) == 0, "library %s, header %s", ella_version(), expected_version);

    /* Error paths of loading. */
    ella_model *model = NULL;
    CHECK(ella_model_load(NULL, &model) == ELLA_STATUS_INVALID_ARGUMENT, "NULL params");
    CHECK(strlen(ella_last_error_message()) > 0, "an error message");
    ella_model_params params = ella_model_params_default();
    params.t5_path = argv[1];
    params.ella_path = argv[2];
    params.ella_config_path = strcmp(argv[3], "-") == 0 ? NULL : argv[3];
    params.sd_path = "/nonexistent/sd";
    CHECK(ella_model_load(&params, &model) == ELLA_STATUS_IO, "missing SD folder");
    CHECK(strstr(ella_last_error_message(), "/nonexistent/sd") != NULL, "the message names the path");
    params.sd_path = argv[4];
    CHECK(ella_model_load(&params, NULL) == ELLA_STATUS_INVALID_ARGUMENT, "NULL out_model");
    ella_model_params bad_size = params;
    bad_size.struct_size = 0;
    CHECK(ella_model_load(&bad_size, &model) == ELLA_STATUS_INVALID_ARGUMENT, "struct_size 0");
    ella_model_params bad_backend = params;
    bad_backend.backend = 99;
    CHECK(ella_model_load(&bad_backend, &model) == ELLA_STATUS_INVALID_ARGUMENT, "unknown backend");

    params.log_callback = on_log;
    CHECK(ella_model_load(&params, &model) == ELLA_STATUS_OK, "load");
    CHECK(log_count == 1, "one log message after loading, got %d", log_count);

    struct progress progress = {0, 0};
    ella_context_params cparams = ella_context_params_default();
    cparams.progress_callback = on_progress;
    cparams.progress_user_data = &progress;
    ella_context *ctx = NULL;
    CHECK(ella_context_new(NULL, &cparams, &ctx) == ELLA_STATUS_INVALID_ARGUMENT, "NULL model");
    CHECK(ella_context_new(model, &cparams, &ctx) == ELLA_STATUS_OK, "context");

    /* Error paths of generating. */
    ella_generate_request request = ella_generate_request_default();
    ella_image *image = NULL;
    CHECK(ella_context_generate(ctx, &request, &image) == ELLA_STATUS_INVALID_ARGUMENT, "NULL prompt");
    request.prompt = "\xff\xfe not UTF-8";
    CHECK(ella_context_generate(ctx, &request, &image) == ELLA_STATUS_INVALID_ARGUMENT, "invalid UTF-8");
    request.prompt = "a red book on a wooden table";
    request.width = 33;
    CHECK(ella_context_generate(ctx, &request, &image) == ELLA_STATUS_INVALID_ARGUMENT, "width 33");
    request.width = size;
    request.height = size;
    request.steps = 0;
    CHECK(ella_context_generate(ctx, &request, &image) == ELLA_STATUS_INVALID_ARGUMENT, "0 steps");
    request.scheduler = 42;
    request.steps = steps;
    CHECK(ella_context_generate(ctx, &request, &image) == ELLA_STATUS_INVALID_ARGUMENT, "unknown scheduler");
    request.scheduler = ELLA_SCHEDULER_DPM_SOLVER_MULTISTEP;
    CHECK(ella_context_generate(NULL, &request, &image) == ELLA_STATUS_INVALID_ARGUMENT, "NULL context");

    /* A real image, with progress. */
    CHECK(ella_context_generate(ctx, &request, &image) == ELLA_STATUS_OK, "generate");
    CHECK(image->width == size && image->height == size && image->channels == 3, "image size");
    CHECK(atomic_load(&progress.steps_seen) == steps && atomic_load(&progress.last_total) == steps,
          "progress %u/%u", atomic_load(&progress.steps_seen), atomic_load(&progress.last_total));
    write_ppm(argv[5], image);

    /* The same request into the caller's RGBA buffer with a padded row pitch. */
    request.pixel_format = ELLA_PIXEL_FORMAT_RGBA8;
    size_t pitch = size * 4 + 16;
    uint8_t *buffer = malloc(pitch * size);
    CHECK(ella_context_generate_into(ctx, &request, buffer, pitch * 10, pitch) == ELLA_STATUS_BUFFER_TOO_SMALL, "small buffer");
    CHECK(ella_context_generate_into(ctx, &request, buffer, pitch * size, size * 3) == ELLA_STATUS_BUFFER_TOO_SMALL, "short pitch");
    CHECK(ella_context_generate_into(ctx, &request, buffer, pitch * size, pitch) == ELLA_STATUS_OK, "generate_into");
    for (size_t y = 0; y < size; y++) {
        for (size_t x = 0; x < size; x++) {
            const uint8_t *px = buffer + y * pitch + x * 4;
            const uint8_t *rgb = image->pixels + (y * size + x) * 3;
            CHECK(px[0] == rgb[0] && px[1] == rgb[1] && px[2] == rgb[2] && px[3] == 255, "pixel %zu,%zu", x, y);
        }
    }
    free(buffer);
    ella_image_free(image);

    /* Cancel from a second thread; the context stays usable. */
    request.pixel_format = ELLA_PIXEL_FORMAT_RGB8;
    request.width = 32;
    request.height = 32;
    request.steps = 500;
    atomic_store(&progress.steps_seen, 0);
    struct canceller canceller = {ctx, &progress};
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, cancel_soon, &canceller) == 0, "thread");
    ella_status status = ella_context_generate(ctx, &request, &image);
    pthread_join(thread, NULL);
    CHECK(status == ELLA_STATUS_CANCELLED, "cancelled, got %d", status);
    CHECK(atomic_load(&progress.steps_seen) < 500, "stopped early");
    request.steps = 1;
    CHECK(ella_context_generate(ctx, &request, &image) == ELLA_STATUS_OK, "generate after a cancel");
    ella_image_free(image);

    /* Encoding only, and one connector step (for hosts with their own U-Net). */
    ella_tensor *states = NULL, *tokens = NULL;
    CHECK(ella_model_encode_t5(model, NULL, 0, &states) == ELLA_STATUS_INVALID_ARGUMENT, "NULL prompt");
    CHECK(ella_model_encode_t5(model, "a red book", 0, &states) == ELLA_STATUS_OK, "encode");
    CHECK(states->rank == 3 && states->shape[0] == 1 && states->shape[1] > 1, "states shape");
    size_t wide = states->shape[1] * (states->shape[2] + 1);
    float *wider = calloc(wide, sizeof(float));
    CHECK(ella_model_run_connector(model, wider, states->shape[1], states->shape[2] + 1, 999.0f, &tokens) ==
              ELLA_STATUS_INVALID_ARGUMENT,
          "wrong width");
    free(wider);
    CHECK(ella_model_run_connector(model, states->data, states->shape[1], states->shape[2], 999.0f, &tokens) == ELLA_STATUS_OK,
          "connector step");
    CHECK(tokens->rank == 3 && tokens->shape[0] == 1, "tokens shape");
    printf("states [1, %llu, %llu] -> condition tokens [1, %llu, %llu]\n", (unsigned long long)states->shape[1],
           (unsigned long long)states->shape[2], (unsigned long long)tokens->shape[1],
           (unsigned long long)tokens->shape[2]);
    ella_tensor_free(states);
    ella_tensor_free(tokens);

    /* Encode once, free T5, then sample from the cached states (tiled VAE decoding too). */
    ella_prompt *cached = NULL;
    CHECK(ella_prompt_new(model, "a red book", NULL, 0, &cached) == ELLA_STATUS_OK, "prompt encode");
    CHECK(ella_model_free_t5(model) == ELLA_STATUS_OK, "free T5");
    CHECK(ella_context_generate(ctx, &request, &image) == ELLA_STATUS_INVALID_ARGUMENT, "no T5, no cache");
    request.prompt = NULL;
    request.prompt_cache = cached;
    request.vae_decode = ELLA_VAE_DECODE_TILED;
    CHECK(ella_context_generate(ctx, &request, &image) == ELLA_STATUS_OK, "generate from the cache");
    ella_image_free(image);
    ella_prompt_free(cached);

    ella_context_free(ctx);
    ella_model_free(model);
    ella_image_free(NULL);
    ella_context_free(NULL);
    ella_model_free(NULL);
    printf("C example passed: wrote %s\n", argv[5]);
    return 0;
}
