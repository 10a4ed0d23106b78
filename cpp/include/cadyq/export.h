/* Symbol visibility of libcadyq (built with -fvisibility=hidden). */
#ifndef CADYQ_EXPORT_H
#define CADYQ_EXPORT_H

#if defined(_WIN32)
#  if defined(CADYQ_BUILDING_LIBRARY)
#    define CADYQ_API __declspec(dllexport)
#  else
#    define CADYQ_API __declspec(dllimport)
#  endif
#else
#  define CADYQ_API __attribute__((visibility("default")))
#endif

#endif /* CADYQ_EXPORT_H */
