import { useCallback, useEffect, useRef, useState } from 'react';
import { useDispatch, useSelector } from 'react-redux';

import { navigated, type Route, routePath } from './store/nav';
import type { AppDispatch, RootState } from './store';

export const useAppDispatch = useDispatch.withTypes<AppDispatch>();
export const useAppSelector = useSelector.withTypes<RootState>();

/** Go to a route: the store first, then the browser history (so Back works). */
export function useNavigate(): (route: Route) => void {
  const dispatch = useAppDispatch();
  return useCallback(
    (route: Route) => {
      dispatch(navigated(route));
      const path = routePath(route);
      if (window.location.pathname !== path) window.history.pushState(null, '', path);
      window.scrollTo(0, 0);
    },
    [dispatch],
  );
}

/** The width of an element, following resizes (charts draw to their container's width). */
export function useWidth<T extends HTMLElement>(fallback = 600): [React.RefObject<T | null>, number] {
  const ref = useRef<T | null>(null);
  const [width, setWidth] = useState(fallback);
  useEffect(() => {
    const element = ref.current;
    if (!element) return;
    const measure = () => setWidth(Math.max(200, Math.floor(element.getBoundingClientRect().width)));
    measure();
    const observer = new ResizeObserver(measure);
    observer.observe(element);
    return () => observer.disconnect();
  }, []);
  return [ref, width];
}

/** ``value`` once it has stopped changing for ``ms`` (typing in a filter box). */
export function useDebounced<T>(value: T, ms: number): T {
  const [settled, setSettled] = useState(value);
  useEffect(() => {
    const timer = window.setTimeout(() => setSettled(value), ms);
    return () => window.clearTimeout(timer);
  }, [value, ms]);
  return settled;
}
