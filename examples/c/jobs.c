/*
 * libella's jobs from C, as a game drives them: ella_job_submit returns at once, and a frame
 * loop polls the job each frame (never blocking) until its image is ready, then saves it.
 * The progress callback runs on the library's worker thread, never on the frame loop's.
 *
 * Then a stress run for valgrind: JOBS jobs on two contexts (one prompt cache, freed while
 * they are queued), some left to finish, some cancelled at pseudo-random steps, some freed
 * while queued or running; the second context is freed with jobs still queued. Every job is
 * freed; the program exits non-zero unless each one ended in a state its treatment allows
 * and the jobs of a context ran in submission order.
 *
 *   jobs T5_DIR ELLA_FILE ELLA_CONFIG SD_DIR OUT.ppm [JOBS [SIZE [STEPS]]]
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

static pthread_t main_thread;
static atomic_uint callbacks_on_main, callbacks_elsewhere;

static void on_progress(uint32_t step, uint32_t total, void *user_data) {
    (void)step;
    (void)total;
    (void)user_data;
    if (pthread_equal(pthread_self(), main_thread)) {
        atomic_fetch_add(&callbacks_on_main, 1);
    } else {
        atomic_fetch_add(&callbacks_elsewhere, 1);
    }
}

static void sleep_ms(long ms) {
    struct timespec pause = {0, ms * 1000000L};
    nanosleep(&pause, NULL);
}

static ella_job_progress poll_job(const ella_job *job) {
    ella_job_progress progress = {sizeof(ella_job_progress), 0, 0, 0, 0};
    CHECK(ella_job_poll(job, &progress) == ELLA_STATUS_OK, "poll");
    return progress;
}

static int is_final(uint32_t state) {
    return state == ELLA_JOB_STATE_DONE || state == ELLA_JOB_STATE_FAILED || state == ELLA_JOB_STATE_CANCELLED;
}

static const char *state_name(uint32_t state) {
    static const char *names[] = {"QUEUED", "RUNNING", "DONE", "FAILED", "CANCELLED"};
    return state < 5 ? names[state] : "?";
}

static void write_ppm(const char *path, const ella_image *image) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot write %s", path);
    fprintf(f, "P6\n%u %u\n255\n", image->width, image->height);
    fwrite(image->pixels, 1, (size_t)image->width * image->height * image->channels, f);
    fclose(f);
}

/* One job driven from a frame loop: submit, then poll once per 5 ms "frame". */
static void frame_loop(ella_context *ctx, const char *out, uint32_t size, uint32_t steps) {
    char prompt[64];
    snprintf(prompt, sizeof prompt, "a red book on a wooden table");
    ella_generate_request request = ella_generate_request_default();
    request.prompt = prompt;
    request.width = size;
    request.height = size;
    request.steps = steps;
    ella_job *job = NULL;
    CHECK(ella_job_submit(ctx, &request, &job) == ELLA_STATUS_OK, "submit");
    memset(prompt, 0, sizeof prompt); /* the job copied the request */

    unsigned frames = 0, last_step = ~0u, previews = 0, last_preview = 0;
    ella_image *image = NULL;
    for (;;) {
        ella_job_progress progress = poll_job(job);
        if (progress.step != last_step) {
            printf("frame %u: %s, step %u of %u\n", frames, state_name(progress.state), progress.step, progress.total);
            last_step = progress.step;
        }
        /* The latest live preview (the context asks for one after every step): show it. */
        ella_image *preview = NULL;
        uint32_t preview_step = 0;
        if (ella_job_preview(job, &preview, &preview_step) == ELLA_STATUS_OK) {
            if (preview_step != last_preview) {
                printf("frame %u: preview after step %u, %ux%u\n", frames, preview_step, preview->width,
                       preview->height);
                last_preview = preview_step;
                previews++;
            }
            ella_image_free(preview);
        }
        ella_status status = ella_job_take_image(job, &image);
        if (status == ELLA_STATUS_OK) {
            break;
        }
        CHECK(status == ELLA_STATUS_NOT_READY && image == NULL, "job ended %s: %s", ella_status_name(status),
              ella_job_error_message(job));
        frames++;
        sleep_ms(5); /* the rest of the frame: render, input, ... */
    }
    ella_job_progress progress = poll_job(job);
    CHECK(progress.state == ELLA_JOB_STATE_DONE && progress.status == ELLA_STATUS_OK, "DONE");
    CHECK(progress.step == steps && progress.total == steps, "step %u of %u", progress.step, progress.total);
    CHECK(ella_job_wait(job, 0) == ELLA_STATUS_OK, "a finished job's outcome");
    CHECK(previews >= 1 && last_preview == steps - 1, "previews seen: %u, the last after step %u", previews,
          last_preview);
    CHECK(image->width == size && image->height == size && image->channels == 3, "image size");
    ella_image *again = NULL;
    CHECK(ella_job_take_image(job, &again) == ELLA_STATUS_INVALID_ARGUMENT && again == NULL, "taken once");
    write_ppm(out, image);
    ella_image_free(image);
    ella_job_free(job);
    CHECK(atomic_load(&callbacks_on_main) == 0 && atomic_load(&callbacks_elsewhere) == steps,
          "progress callbacks: %u on the frame loop's thread, %u on the worker", atomic_load(&callbacks_on_main),
          atomic_load(&callbacks_elsewhere));
    printf("frame loop: %u frames of 5 ms while the job ran; wrote %s\n", frames, out);
}

enum treatment { FINISH, CANCEL, FREE };

struct stress_job {
    ella_job *job;
    int context; /* 0 or 1 */
    enum treatment treatment;
    uint32_t at_step;  /* CANCEL / FREE: once RUNNING with step >= at_step */
    int cancelled;     /* ella_job_cancel called */
    int queued_at_cancel;
    uint32_t final_state; /* once final */
    int final;
};

static uint32_t next_random(uint32_t *state) {
    *state = *state * 1664525u + 1013904223u;
    return *state >> 8;
}

/* Polls every live job, last submitted first: a job seen started means every job before it
 * on its context has finished (they run in order), which the later polls check. */
static unsigned poll_all(struct stress_job *jobs, unsigned count, unsigned *started_upto) {
    unsigned live = 0;
    for (unsigned n = count; n-- > 0;) {
        struct stress_job *j = &jobs[n];
        if (j->job == NULL || j->final) {
            continue;
        }
        ella_job_progress p = poll_job(j->job);
        /* Started: RUNNING, DONE or FAILED (a CANCELLED job may never have run). */
        int started = p.state == ELLA_JOB_STATE_RUNNING || p.state == ELLA_JOB_STATE_DONE ||
                      p.state == ELLA_JOB_STATE_FAILED;
        if (started && n > started_upto[j->context]) {
            started_upto[j->context] = n;
        }
        if (is_final(p.state)) {
            j->final = 1;
            j->final_state = p.state;
            continue;
        }
        CHECK(n >= started_upto[j->context], "job %u %s after job %u of its context started", n,
              state_name(p.state), started_upto[j->context]);
        live++;
        int due = p.state == ELLA_JOB_STATE_RUNNING && p.step >= j->at_step;
        if (j->treatment == CANCEL && !j->cancelled && due) {
            ella_job_cancel(j->job);
            j->cancelled = 1;
        } else if (j->treatment == FREE && due) {
            ella_job_free(j->job);
            j->job = NULL;
        }
    }
    return live;
}

static void stress(ella_model *model, unsigned count, uint32_t size, uint32_t steps) {
    ella_context *ctx[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        CHECK(ella_context_new(model, NULL, &ctx[i]) == ELLA_STATUS_OK, "context %d", i);
    }
    ella_prompt *prompt = NULL;
    CHECK(ella_prompt_new(model, "a red book on a wooden table", NULL, 0, &prompt) == ELLA_STATUS_OK, "prompt");

    struct stress_job *jobs = calloc(count, sizeof *jobs);
    uint32_t random = 12345;
    for (unsigned n = 0; n < count; n++) {
        struct stress_job *j = &jobs[n];
        uint32_t r = next_random(&random);
        j->context = n % 4 == 3; /* a quarter on the context freed early */
        j->treatment = r % 4 == 2 ? CANCEL : r % 4 == 3 ? FREE : FINISH;
        j->at_step = next_random(&random) % (steps + 1);
        ella_generate_request request = ella_generate_request_default();
        request.prompt_cache = prompt;
        request.width = size;
        request.height = size;
        request.steps = steps;
        request.seed = n;
        CHECK(ella_job_submit(ctx[j->context], &request, &j->job) == ELLA_STATUS_OK, "submit %u", n);
        if (j->treatment == CANCEL && r % 16 < 4) {
            /* Cancelled at once, most likely while queued. */
            j->queued_at_cancel = poll_job(j->job).state == ELLA_JOB_STATE_QUEUED;
            ella_job_cancel(j->job);
            j->cancelled = 1;
        } else if (j->treatment == FREE && r % 16 < 4) {
            ella_job_free(j->job);
            j->job = NULL;
        }
    }
    ella_prompt_free(prompt); /* the queued jobs keep the states they need */

    unsigned started_upto[2] = {0, 0};
    unsigned frames = 0;
    int freed_1 = 0;
    for (;;) {
        unsigned live = poll_all(jobs, count, started_upto);
        if (!freed_1) {
            unsigned done_on_1 = 0, live_on_1 = 0;
            for (unsigned n = 0; n < count; n++) {
                struct stress_job *j = &jobs[n];
                done_on_1 += j->context == 1 && j->final && j->final_state == ELLA_JOB_STATE_DONE;
                live_on_1 += j->context == 1 && j->job != NULL && !j->final;
            }
            if (done_on_1 >= 2 || live_on_1 == 0) {
                /* Freeing a context cancels its jobs; once it returns, each has ended. */
                ella_context_free(ctx[1]);
                ctx[1] = NULL;
                freed_1 = 1;
                for (unsigned n = 0; n < count; n++) {
                    struct stress_job *j = &jobs[n];
                    if (j->context == 1 && j->job != NULL) {
                        uint32_t state = poll_job(j->job).state;
                        CHECK(is_final(state), "job %u %s after its context was freed", n, state_name(state));
                    }
                }
            }
        } else if (live == 0) {
            break;
        }
        frames++;
        sleep_ms(1);
    }
    CHECK(freed_1, "the second context was freed");

    unsigned done = 0, cancelled = 0, freed = 0;
    for (unsigned n = 0; n < count; n++) {
        struct stress_job *j = &jobs[n];
        if (j->job == NULL) {
            freed++;
            continue;
        }
        uint32_t state = j->final_state;
        if (j->context == 1 && state == ELLA_JOB_STATE_CANCELLED) {
            /* cancelled by ella_context_free */
        } else if (j->treatment == FINISH) {
            CHECK(state == ELLA_JOB_STATE_DONE, "job %u: %s (%s)", n, state_name(state), ella_job_error_message(j->job));
        } else if (j->queued_at_cancel) {
            CHECK(state == ELLA_JOB_STATE_CANCELLED, "job %u cancelled while queued: %s", n, state_name(state));
        } else {
            CHECK(state == ELLA_JOB_STATE_CANCELLED || state == ELLA_JOB_STATE_DONE, "job %u: %s", n,
                  state_name(state));
        }
        if (state == ELLA_JOB_STATE_DONE) {
            ella_image *image = NULL;
            CHECK(ella_job_take_image(j->job, &image) == ELLA_STATUS_OK, "job %u's image", n);
            CHECK(image->width == size && image->height == size, "job %u's image size", n);
            ella_image_free(image);
            done++;
        } else {
            CHECK(ella_job_wait(j->job, ELLA_WAIT_FOREVER) == ELLA_STATUS_CANCELLED, "job %u's outcome", n);
            CHECK(strlen(ella_job_error_message(j->job)) > 0, "job %u's message", n);
            cancelled++;
        }
        ella_job_free(j->job);
    }
    CHECK(done > 0 && cancelled > 0 && freed > 0, "%u done, %u cancelled, %u freed", done, cancelled, freed);
    ella_context_free(ctx[0]);
    free(jobs);
    printf("stress: %u jobs of %ux%u, %u step(s): %u done, %u cancelled, %u freed unfinished; %u frames\n", count,
           size, size, steps, done, cancelled, freed, frames);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s T5_DIR ELLA_FILE ELLA_CONFIG SD_DIR OUT.ppm [JOBS [SIZE [STEPS]]]\n", argv[0]);
        return 2;
    }
    unsigned count = argc > 6 ? (unsigned)atoi(argv[6]) : 100;
    uint32_t size = argc > 7 ? (uint32_t)atoi(argv[7]) : 32;
    uint32_t steps = argc > 8 ? (uint32_t)atoi(argv[8]) : 1;
    CHECK(count >= 8 && steps >= 1, "at least 8 jobs and 1 step");
    main_thread = pthread_self();

    ella_model_params params = ella_model_params_default();
    params.t5_path = argv[1];
    params.ella_path = argv[2];
    params.ella_config_path = argv[3];
    params.sd_path = argv[4];
    ella_model *model = NULL;
    CHECK(ella_model_load(&params, &model) == ELLA_STATUS_OK, "load");

    ella_context_params cparams = ella_context_params_default();
    cparams.progress_callback = on_progress;
    cparams.preview_every = 1;
    ella_context *ctx = NULL;
    CHECK(ella_context_new(model, &cparams, &ctx) == ELLA_STATUS_OK, "context");

    /* What submit checks itself fails the call and makes no job. */
    ella_generate_request bad = ella_generate_request_default();
    ella_job *job = NULL;
    CHECK(ella_job_submit(ctx, &bad, &job) == ELLA_STATUS_INVALID_ARGUMENT && job == NULL, "NULL prompt");
    CHECK(ella_job_submit(NULL, &bad, &job) == ELLA_STATUS_INVALID_ARGUMENT && job == NULL, "NULL context");
    /* What the pipeline checks fails the job, with its own message. */
    bad.prompt = "a red book";
    bad.width = 33;
    CHECK(ella_job_submit(ctx, &bad, &job) == ELLA_STATUS_OK, "submit a job that fails");
    CHECK(ella_job_wait(job, ELLA_WAIT_FOREVER) == ELLA_STATUS_INVALID_ARGUMENT, "a width of 33 fails the job");
    CHECK(poll_job(job).state == ELLA_JOB_STATE_FAILED && poll_job(job).status == ELLA_STATUS_INVALID_ARGUMENT,
          "FAILED");
    CHECK(strstr(ella_job_error_message(job), "width 33") != NULL, "the job's message: %s",
          ella_job_error_message(job));
    ella_job_free(job);
    ella_job_free(NULL);

    frame_loop(ctx, argv[5], size, steps < 4 ? 4 : steps);
    ella_context_free(ctx);

    stress(model, count, size, steps);
    ella_model_free(model);
    printf("C jobs example passed\n");
    return 0;
}
