/* SPDX-License-Identifier: MIT */
/*
 * main.c - the baton command-line tool (subcommands are added as the engine lands).
 */
#include <stdio.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "usage: baton run|model gen|bench-engine ...\n");
    return 2;
}
