#!/bin/sh
# Prints the newest stack this machine runs natively: 1.21 where glibc is 2.39 or newer (the
# oldest its ml-metadata and TFDV wheels take) and Python 3.13 is installed, else 1.16.
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
major=${glibc%%.*}
minor=${glibc#*.}
minor=${minor%%.*}
if [ -n "$glibc" ] && { [ "$major" -gt 2 ] || [ "$minor" -ge 39 ]; } && command -v python3.13 >/dev/null 2>&1; then
    echo 1.21
else
    echo 1.16
fi
