/*
 * test_files.c: common/'s files, tested where they live: .npy files written and read back, and
 * every malformed header refused with a message naming the file (npy.c); the files a hostile user
 * hands a program -- FIFOs, folders, devices, a full disk, a file-size limit, a signal mid-write
 * -- refused or failed cleanly, the previous output left whole and no temporary file behind
 * (fileio.c, bench.c's TSV rows); and plot_show's one-line report when a plot fails (plot.c).
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/bench.h"
#include "common/error.h"
#include "common/fileio.h"
#include "common/npy.h"
#include "common/plot.h"
#include "common/tensor.h"
#include "common/test_common.h"
#include "common/testing.h"

/* ==== .npy files ================================================================================== */

START_TEST(test_npy_round_trip)
{
    char path[4200];
    const size_t shapes[5][4] = {{0}, {7}, {3, 5}, {2, 1, 4}, {2, 3, 1, 5}};
    for (int ndim = 0; ndim <= 4; ndim++) {
        size_t numel = 1;
        for (int i = 0; i < ndim; i++)
            numel *= shapes[ndim][i];
        float *data = xmalloc(numel * 4, "data");
        fill_normal(data, numel, 50 + ndim);
        testing_tmp_path(path, sizeof path, "a.npy");
        ck_assert_int_eq(npy_write(path, NPY_F32, ndim, shapes[ndim], data), 0);
        NpyArray a;
        ck_assert_msg(npy_read(path, &a) == 0, "%s", error_message());
        ck_assert_int_eq(a.dtype, NPY_F32);
        ck_assert_int_eq(a.ndim, ndim);
        for (int i = 0; i < ndim; i++)
            ck_assert_uint_eq(a.shape[i], shapes[ndim][i]);
        ck_assert_uint_eq(a.numel, numel);
        ck_assert_int_eq(memcmp(a.data, data, numel * 4), 0);
        npy_free(&a);
        free(data);
    }
    int32_t ints[6] = {-3, 0, 1, 2147483647, -2147483647, 42};
    size_t shape[2] = {2, 3};
    ck_assert_int_eq(npy_write(path, NPY_I32, 2, shape, ints), 0);
    NpyArray a;
    ck_assert_int_eq(npy_read(path, &a), 0);
    ck_assert_int_eq(a.dtype, NPY_I32);
    ck_assert_int_eq(memcmp(a.data, ints, sizeof ints), 0);
    npy_free(&a);
    /* the header is padded so that the data starts on a 64-byte boundary */
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    ck_assert_int_eq((ftell(f) - (long)sizeof ints) % 64, 0);
    fclose(f);
}
END_TEST

/* Writes magic + version + header (+ padding to the declared length) + data. */
static void write_raw_npy(const char *path, int major, const char *header, long declared_len, size_t data_bytes)
{
    size_t hlen = strlen(header);
    size_t len = declared_len >= 0 ? (size_t)declared_len : hlen;
    /* magic (6), version (2), header length (2), header, data */
    unsigned char *buf = xcalloc(1, 10 + hlen + data_bytes, "a raw .npy file");
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    buf[7] = 0;
    buf[8] = (unsigned char)(len & 0xff);
    buf[9] = (unsigned char)(len >> 8);
    memcpy(buf + 10, header, hlen);
    write_bytes(path, buf, 10 + hlen + data_bytes);
    free(buf);
}

START_TEST(test_npy_malformed_files)
{
    /* a good header for a (2, 3) float32 array: the cases below break the rest of the file */
#define GOOD_2x3 "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n"
    const struct {
        const char *header; /* NULL: raw bytes below */
        int major;
        long declared;
        size_t data;
        const char *expect;
    } cases[] = {
        {GOOD_2x3, 9, -1, 24, "version 9.0 is not supported"},
        {GOOD_2x3, 1, 4000, 0, "truncated .npy header"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 1, -1, 24, "end with a newline"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }\n", 1, -1, 48, "dtype '<f8' is not supported"},
        {"{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }\n", 1, -1, 24, "big-endian"},
        {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n", 1, -1, 24, "Fortran-order"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }\n", 1, -1, 24, "bad shape tuple"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }\n", 1, -1, 24, "negative dimension"},
        {"{'descr': '<f4', 'fortran_order': False, }\n", 1, -1, 4, "missing 'shape'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}\n", 1, -1, 8, "unknown key 'x'"},
        {GOOD_2x3, 1, -1, 20, "truncated: the header promises 6"},
        {GOOD_2x3, 1, -1, 28, "4 unexpected bytes"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }\n", 1, -1, 8, "overflows"},
        {"{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }\n", 1, -1, 8, "True or False"},
        {"['descr', '<f4']\n", 1, -1, 8, "expected '{'"},
    };
#undef GOOD_2x3
    char path[4200];
    NpyArray a;
    testing_tmp_path(path, sizeof path, "bad.npy");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_raw_npy(path, cases[i].major, cases[i].header, cases[i].declared, cases[i].data);
        ck_assert_msg(npy_read(path, &a) == -1, "case %zu (%s) was accepted", i, cases[i].expect);
        ck_assert_msg(strstr(error_message(), cases[i].expect), "case %zu: got '%s', expected '%s'", i,
                      error_message(), cases[i].expect);
        ck_assert_ptr_nonnull(strstr(error_message(), path)); /* every message names the file */
    }
    write_bytes(path, "", 0);
    ck_assert_int_eq(npy_read(path, &a), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "not a .npy file"));
    write_bytes(path, "PK\x03\x04 this is a zip file", 24);
    ck_assert_int_eq(npy_read(path, &a), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "not a .npy file"));
    ck_assert_int_eq(npy_read("/nonexistent/q.npy", &a), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "cannot open"));
    ck_assert_int_eq(npy_read(testing_tmp, &a), -1); /* a folder */
    ck_assert_ptr_nonnull(strstr(error_message(), "is a folder, expected a file"));
}
END_TEST

START_TEST(test_npy_tensor_rank_and_dtype)
{
    char path[4200];
    Tensor t;
    float data[6] = {1, 2, 3, 4, 5, 6};
    testing_tmp_path(path, sizeof path, "t.npy");
    ck_assert_int_eq(npy_write(path, NPY_F32, 3, (size_t[]){1, 2, 3}, data), 0);
    ck_assert_int_eq(npy_read_tensor(path, 4, &t), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "has 3 dimensions, expected 4"));
    ck_assert_int_eq(npy_read_tensor(path, 3, &t), 0);
    ck_assert_uint_eq(t.shape[2], 3);
    ck_assert_float_eq(t.data[5], 6.0f);
    tensor_free(&t);
    ck_assert_int_eq(npy_write(path, NPY_I32, 1, (size_t[]){6}, data), 0);
    ck_assert_int_eq(npy_read_tensor(path, 1, &t), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "expected float32"));
    ck_assert_int_eq(npy_write("/nonexistent/dir/x.npy", NPY_F32, 1, (size_t[]){6}, data), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "cannot create"));
}
END_TEST

/* ==== files a hostile user hands us (fileio) ====================================================== */

/* Special files as inputs are refused at once, with what they are: a FIFO would block a plain
 * fopen() forever (nobody writes it), a folder or a device is not a file to read. */
START_TEST(test_special_files_as_inputs)
{
    char fifo[4200], path[4200];
    NpyArray a;
    testing_tmp_path(fifo, sizeof fifo, "fifo");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    ck_assert_int_eq(npy_read(fifo, &a), -1); /* returns: the Check timeout would catch a hang */
    ck_assert_msg(strstr(error_message(), "fifo: is a FIFO, not a regular file"), "%s", error_message());
    ck_assert_int_eq(npy_read(testing_tmp, &a), -1);
    ck_assert_msg(strstr(error_message(), "is a folder, expected a file"), "%s", error_message());
    ck_assert_int_eq(npy_read("/dev/zero", &a), -1);
    ck_assert_msg(strstr(error_message(), "/dev/zero: is a character device"), "%s", error_message());
    FILE *f = file_open_input(testing_tmp_path(path, sizeof path, "missing.npy"));
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(error_message(), "missing.npy: cannot open: No such file"), "%s", error_message());
}
END_TEST

/* Outputs that cannot be renamed over: a folder and a socket-like thing are refused before any
 * work, a FIFO nobody reads is an error (not a hang), a character device is written in place
 * with every write checked; none of it leaves a file behind. */
START_TEST(test_special_files_as_outputs)
{
    char fifo[4200], before[4096], after[4096];
    const float data[4] = {1, 2, 3, 4};
    testing_tmp_path(fifo, sizeof fifo, "fifo");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    testing_folder_names(testing_tmp, before, sizeof before);
    ck_assert_int_eq(npy_write(testing_tmp, NPY_F32, 1, (size_t[]){4}, data), -1);
    ck_assert_msg(strstr(error_message(), "is a folder, expected a file"), "%s", error_message());
    ck_assert_int_eq(file_check_output(testing_tmp), -1);
    ck_assert_int_eq(npy_write(fifo, NPY_F32, 1, (size_t[]){4}, data), -1);
    ck_assert_msg(strstr(error_message(), "fifo: is a FIFO that no process is reading"), "%s", error_message());
    ck_assert_int_eq(npy_write("/dev/full", NPY_F32, 1, (size_t[]){4}, data), -1);
    ck_assert_msg(strstr(error_message(), "/dev/full: write failed: No space left on device"), "%s", error_message());
    ck_assert_int_eq(npy_write("/dev/null", NPY_F32, 1, (size_t[]){4}, data), 0);
    char path[4200];
    ck_assert_int_eq(npy_write(testing_tmp_path(path, sizeof path, "no/such/folder.npy"), NPY_F32, 1, (size_t[]){4}, data),
                     -1);
    ck_assert_msg(strstr(error_message(), "cannot create: No such file or directory"), "%s", error_message());
    ck_assert_int_eq(file_check_output(path), -1);
    testing_folder_names(testing_tmp, after, sizeof after);
    ck_assert_str_eq(before, after);
}
END_TEST

typedef struct {
    size_t n;
    const float *data;
} NpyJob;

static int write_npy_job(const char *path, void *ctx)
{
    const NpyJob *j = ctx;
    return npy_write(path, NPY_F32, 1, (size_t[]){j->n}, j->data);
}

/* A full disk or a file-size limit while writing: the previous file is left exactly as it was,
 * and no temporary file is left beside it. */
START_TEST(test_failed_write_keeps_the_previous_file)
{
    char path[4200], before[4096], after[4096], err[512];
    const char *previous = "a previous good output\n";
    testing_tmp_path(path, sizeof path, "out.npy");
    write_bytes(path, previous, strlen(previous));
    ck_assert_int_eq(chmod(path, 0640), 0);
    testing_folder_names(testing_tmp, before, sizeof before);
    float *data = xcalloc(1 << 16, sizeof(float), "data");
    NpyJob job = {.n = 1 << 16, .data = data}; /* 256 KiB against a limit of 16 KiB */
    const int status = testing_write_limited(write_npy_job, path, &job, 16 << 10, err, sizeof err);
    ck_assert_msg(status == 1 && strstr(err, "out.npy: write failed: File too large"), "status %d: %s", status, err);
    FILE *f = fopen(path, "rb");
    char got[256] = "";
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(fgets(got, sizeof got, f));
    fclose(f);
    ck_assert_str_eq(got, previous);
    testing_folder_names(testing_tmp, after, sizeof after);
    ck_assert_str_eq(before, after);
    /* a write that succeeds replaces it and keeps its permissions; a new file gets 0666 & ~umask */
    ck_assert_int_eq(write_npy_job(path, &job), 0);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0640);
    ck_assert_int_eq((long)st.st_size, 128 + (1 << 16) * 4);
    const mode_t old = umask(027);
    ck_assert_int_eq(write_npy_job(testing_tmp_path(path, sizeof path, "new.npy"), &job), 0);
    umask(old);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0640);
    /* a symbolic link stays a link to the file it names, which gets the new data */
    char link[4200];
    ck_assert_int_eq(symlink("new.npy", testing_tmp_path(link, sizeof link, "link.npy")), 0);
    job.n = 3;
    ck_assert_int_eq(write_npy_job(link, &job), 0);
    ck_assert_int_eq(lstat(link, &st), 0);
    ck_assert(S_ISLNK(st.st_mode));
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq((long)st.st_size, 128 + 3 * 4);
    free(data);
}
END_TEST

static int write_tsv_rows(const char *path, void *ctx)
{
    (void)ctx;
    Tsv t;
    if (tsv_open(&t, path, NULL) != 0)
        return -1;
    tsv_header(&t, "a\tb");
    for (int i = 0; i < 20000; i++) /* ~300 KiB: the limit stops it, and tsv_row die()s */
        tsv_row(&t, "%d\t%d.5", i, i);
    tsv_close(&t);
    return 0;
}

/* A benchmark's rows whose write fails: die() (exit status 1), and its exit handler removes the
 * temporary file; an output still being written when a signal ends the program is removed too. */
START_TEST(test_dying_writer_leaves_nothing)
{
    char path[4200], before[4096], after[4096], err[512];
    const char *previous = "kind\tvalue\nold\t1\n";
    testing_tmp_path(path, sizeof path, "rows.tsv");
    write_bytes(path, previous, strlen(previous));
    testing_folder_names(testing_tmp, before, sizeof before);
    ck_assert_int_eq(testing_write_limited(write_tsv_rows, path, NULL, 32 << 10, err, sizeof err), 1);
    ck_assert_msg(strstr(err, "rows.tsv: write failed: File too large"), "%s", err);
    testing_folder_names(testing_tmp, after, sizeof after);
    ck_assert_str_eq(before, after);
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) { /* an output half written when SIGTERM comes */
        signal(SIGTERM, SIG_DFL); /* Check's own handler would end the whole test's process group */
        OutFile o;
        if (out_open(&o, path) != 0 || out_printf(&o, "half\n") != 0 || fflush(o.f) != 0)
            _exit(2);
        raise(SIGTERM);
        _exit(3);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM, "status %d", status);
    testing_folder_names(testing_tmp, after, sizeof after);
    ck_assert_str_eq(before, after);
    char got[256] = "";
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fread(got, 1, sizeof got - 1, f), strlen(previous));
    fclose(f);
    ck_assert_str_eq(got, previous);
}
END_TEST

/* ==== plots ======================================================================================= */

/* plot_show names what went wrong in one line after the caller's lead (a chapter without a plot
 * script here); without gnuplot it writes nothing to f (plot_draw says so on stdout). */
START_TEST(test_plot_show_reports_a_failure)
{
    char dat[4200], line[8192] = "";
    const char *rows = "x\ty\n1\t2\n";
    write_bytes(testing_tmp_path(dat, sizeof dat, "p.dat"), rows, strlen(rows));
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    const int rc = plot_show("no_such_chapter", "bench", dat, 0, f, "lead: ", "\n");
    rewind(f);
    const int got = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    if (!plot_available()) {
        ck_assert_int_eq(rc, 1);
        ck_assert_int_eq(got, 0);
        return;
    }
    ck_assert_int_eq(rc, -1);
    ck_assert_msg(strncmp(line, "lead: (plot failed: ", 20) == 0, "%s", line);
    ck_assert_msg(strstr(line, "no_such_chapter.gp: plot script missing"), "%s", line);
}
END_TEST

TestingCase common_files_case(void)
{
    return (TestingCase){.name = "files", .temp_dir = 1,
                         .tests = {test_npy_round_trip, test_npy_malformed_files, test_npy_tensor_rank_and_dtype,
                                   test_special_files_as_inputs, test_special_files_as_outputs,
                                   test_failed_write_keeps_the_previous_file, test_dying_writer_leaves_nothing,
                                   test_plot_show_reports_a_failure}};
}
