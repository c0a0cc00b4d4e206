#!/usr/bin/env bash
# Follows an ssegate stream with curl, reconnecting after every end with the last id it
# saw (curl -N alone prints one connection and stops). Prints `open` per response head
# and one `TYPE DATA` line per event (TYPE `message` for unnamed ones; DATA is the first
# data line). Usage: curl-follow.sh URL
url=$1
last=""
while :; do
  type="" data=""
  while IFS= read -r line; do
    line=${line%$'\r'}
    case $line in
      "HTTP/"*" 200"*) echo open ;;
      "id:"*) last=${line#id:} last=${last# } ;;
      "event:"*) type=${line#event:} type=${type# } ;;
      "data:"*) [ -z "$data" ] && data=${line#data:} data=${data# } ;;
      "")
        [ -n "$data" ] && echo "${type:-message} $data"
        type="" data=""
        ;;
    esac
  done < <(curl -sSN -D - -H 'Accept: text/event-stream' ${last:+-H "Last-Event-ID: $last"} "$url")
  sleep "0.$((RANDOM % 9 + 1))" # the stream's retry: is about a second; curl knows none
done
