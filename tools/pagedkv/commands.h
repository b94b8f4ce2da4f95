/* Subcommands of the pagedkv program that live in their own files. */
#ifndef PAGEDKV_TOOL_COMMANDS_H
#define PAGEDKV_TOOL_COMMANDS_H

/* pagedkv formats [--check FILE]: the measured formats table (formats.c). */
int cmd_formats(int argc, char **argv);

#endif
