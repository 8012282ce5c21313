/*
 * libella under a long, hostile run, for valgrind: two threads, each with its own context
 * on one shared model (and one shared prompt cache), make ROUNDS generations between them;
 * each is cancelled at a random
 * step from a third thread, and after each a thread changes the model's LoRAs (which waits
 * for the other thread's generation). Then a completed generation with each LoRA setting
 * must equal the uninterrupted one made before the soak, byte for byte. A context is also
 * freed from its own progress callback. Exits non-zero on the first unexpected result.
 *
 *   soak T5_DIR ELLA_FILE ELLA_CONFIG SD_DIR LORA_A LORA_B [ROUNDS [SIZE [STEPS]]]
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static uint32_t SIZE = 16, STEPS = 4;
static const char *LORAS[2];
/* The prompt's states, encoded once and shared by every generation of both threads. */
static const ella_prompt *PROMPT;

/* A step at which the progress callback hands over to the canceller thread and waits
 * until it has called ella_context_cancel: the next model block then sees the flag. */
struct worker {
    ella_model *model;
    ella_context *ctx;
    uint32_t seed;
    uint32_t cancel_at;
    unsigned rounds;
    unsigned cancelled;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int want_cancel; /* set by the callback, cleared by the canceller */
    int quit;
};

static void on_progress(uint32_t step, uint32_t total, void *user_data) {
    struct worker *w = user_data;
    (void)total;
    if (step != w->cancel_at) {
        return;
    }
    pthread_mutex_lock(&w->lock);
    w->want_cancel = 1;
    pthread_cond_broadcast(&w->changed);
    while (w->want_cancel) {
        pthread_cond_wait(&w->changed, &w->lock);
    }
    pthread_mutex_unlock(&w->lock);
}

static void *canceller(void *arg) {
    struct worker *w = arg;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->want_cancel && !w->quit) {
            pthread_cond_wait(&w->changed, &w->lock);
        }
        if (w->quit) {
            break;
        }
        ella_context_cancel(w->ctx);
        w->want_cancel = 0;
        pthread_cond_broadcast(&w->changed);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

static uint32_t next_random(uint32_t *state) {
    *state = *state * 1664525u + 1013904223u;
    return *state >> 8;
}

static ella_generate_request request_for(uint64_t seed) {
    ella_generate_request r = ella_generate_request_default();
    r.prompt_cache = PROMPT;
    r.width = SIZE;
    r.height = SIZE;
    r.steps = STEPS;
    r.seed = seed;
    return r;
}

/* LoRA setting `which`: 0 none, 1 A, 2 B, 3 both. */
static void set_loras(ella_model *model, unsigned which) {
    const char *paths[2];
    float scales[2] = {0.8f, 1.2f};
    size_t count = 0;
    if (which & 1) paths[count++] = LORAS[0];
    if (which & 2) paths[count++] = LORAS[1];
    CHECK(ella_model_set_loras(model, paths, scales, count) == ELLA_STATUS_OK, "set LoRAs %u", which);
}

static void *work(void *arg) {
    struct worker *w = arg;
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, canceller, w) == 0, "canceller thread");
    uint32_t random = w->seed;
    for (unsigned i = 0; i < w->rounds; i++) {
        w->cancel_at = 1 + next_random(&random) % (STEPS - 1);
        ella_generate_request r = request_for(next_random(&random));
        ella_image *image = NULL;
        ella_status status = ella_context_generate(w->ctx, &r, &image);
        CHECK(status == ELLA_STATUS_CANCELLED && image == NULL, "round %u: status %d", i, status);
        w->cancelled++;
        set_loras(w->model, next_random(&random) % 4);
    }
    pthread_mutex_lock(&w->lock);
    w->quit = 1;
    pthread_cond_broadcast(&w->changed);
    pthread_mutex_unlock(&w->lock);
    pthread_join(thread, NULL);
    return NULL;
}

static uint8_t *generate(ella_context *ctx, uint64_t seed) {
    ella_generate_request r = request_for(seed);
    size_t bytes = (size_t)SIZE * SIZE * 3;
    uint8_t *pixels = malloc(bytes);
    CHECK(ella_context_generate_into(ctx, &r, pixels, bytes, (size_t)SIZE * 3) == ELLA_STATUS_OK, "generate");
    return pixels;
}

static void free_self(uint32_t step, uint32_t total, void *user_data) {
    (void)total;
    if (step == 1) {
        ella_context_free(*(ella_context **)user_data);
    }
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s T5_DIR ELLA_FILE ELLA_CONFIG SD_DIR LORA_A LORA_B [ROUNDS [SIZE [STEPS]]]\n",
                argv[0]);
        return 2;
    }
    unsigned rounds = argc > 7 ? (unsigned)atoi(argv[7]) : 100;
    SIZE = argc > 8 ? (uint32_t)atoi(argv[8]) : 16;
    STEPS = argc > 9 ? (uint32_t)atoi(argv[9]) : 4;
    CHECK(STEPS >= 2 && rounds >= 2, "at least 2 steps and 2 rounds");
    LORAS[0] = argv[5];
    LORAS[1] = argv[6];

    ella_model_params params = ella_model_params_default();
    params.t5_path = argv[1];
    params.ella_path = argv[2];
    params.ella_config_path = argv[3];
    params.sd_path = argv[4];
    ella_model *model = NULL;
    CHECK(ella_model_load(&params, &model) == ELLA_STATUS_OK, "load");
    ella_prompt *prompt = NULL;
    CHECK(ella_prompt_new(model, "a red book on a wooden table", NULL, 0, &prompt) == ELLA_STATUS_OK, "encode");
    PROMPT = prompt;

    struct worker workers[2];
    for (int i = 0; i < 2; i++) {
        struct worker *w = &workers[i];
        memset(w, 0, sizeof *w);
        w->model = model;
        w->seed = 7 + (uint32_t)i;
        w->rounds = rounds / 2 + (unsigned)i * (rounds % 2);
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->changed, NULL);
        ella_context_params cparams = ella_context_params_default();
        cparams.progress_callback = on_progress;
        cparams.progress_user_data = w;
        CHECK(ella_context_new(model, &cparams, &w->ctx) == ELLA_STATUS_OK, "context %d", i);
    }

    /* The uninterrupted images of each LoRA setting, before the soak. */
    ella_context *plain = NULL;
    CHECK(ella_context_new(model, NULL, &plain) == ELLA_STATUS_OK, "plain context");
    uint8_t *reference[4];
    for (unsigned which = 0; which < 4; which++) {
        set_loras(model, which);
        reference[which] = generate(plain, 1000);
    }

    pthread_t threads[2];
    for (int i = 0; i < 2; i++) {
        CHECK(pthread_create(&threads[i], NULL, work, &workers[i]) == 0, "worker %d", i);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(threads[i], NULL);
    }
    unsigned cancelled = workers[0].cancelled + workers[1].cancelled;
    CHECK(cancelled == rounds, "%u of %u rounds cancelled", cancelled, rounds);

    /* After it all, completed generations on the soaked contexts equal the uninterrupted
     * ones (their callbacks no longer cancel: steps count from 1). */
    workers[0].cancel_at = workers[1].cancel_at = 0;
    for (unsigned which = 0; which < 4; which++) {
        set_loras(model, which);
        uint8_t *again = generate(workers[which % 2].ctx, 1000);
        CHECK(memcmp(again, reference[which], (size_t)SIZE * SIZE * 3) == 0, "LoRA setting %u differs", which);
        free(again);
        free(reference[which]);
    }

    /* A context freed from its own progress callback is freed when its call returns. */
    ella_context *doomed = NULL;
    ella_context_params cparams = ella_context_params_default();
    cparams.progress_callback = free_self;
    cparams.progress_user_data = &doomed;
    CHECK(ella_context_new(model, &cparams, &doomed) == ELLA_STATUS_OK, "doomed context");
    uint8_t *last = generate(doomed, 1000);
    free(last);

    for (int i = 0; i < 2; i++) {
        ella_context_free(workers[i].ctx);
        pthread_mutex_destroy(&workers[i].lock);
        pthread_cond_destroy(&workers[i].changed);
    }
    ella_context_free(plain);
    ella_prompt_free(prompt);
    ella_model_free(model);
    printf("soak passed: %u generations cancelled at random steps on 2 threads, LoRAs changed between "
           "them; completed images equal the uninterrupted ones\n",
           cancelled);
    return 0;
}
