#!/bin/sh
# Stand-in for the official image's healthcheck.sh (its options are accepted and ignored):
# healthy once the server answers on its socket.
exec mariadb-admin --socket=/run/mysqld/mysqld.sock ping --silent
