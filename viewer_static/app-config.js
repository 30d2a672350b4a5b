/** @type {AppTypes.Config} */
// The OHIF viewer's configuration as minipacs serves it at /app-config.js (it replaces the one
// the @ohif/app bundle ships). One data source: this server's DICOMweb, on the same origin, so
// the login session cookie rides on every request and no CORS is involved.
window.config = {
  name: 'minipacs',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  groupEnabledModesFirst: true,
  investigationalUseDialog: { option: 'never' },
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'minipacs',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'minipacs',
      configuration: {
        friendlyName: 'minipacs',
        name: 'minipacs',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        wadoUriRoot: '/wado',
        qidoSupportsIncludeField: true,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        dicomUploadEnabled: false,
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
  // A session that ends (logout, expiry) turns DICOMweb answers into 401: log in again and
  // come back to the same page.
  httpErrorHandler: error => {
    if (error && error.status === 401) {
      const next = window.location.pathname + window.location.search;
      window.location.assign('/login?next=' + encodeURIComponent(next));
    }
  },
};
